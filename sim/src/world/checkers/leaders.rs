//! At most one leader per term (Raft's election safety).

use raft::StateRole;
use vaultfleet::replica::Status;

use crate::workload::Workload;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// Records `status`'s leadership, and fails if another replica led its term.
    pub(in crate::world) fn check_one_leader_per_term(&mut self, status: &Status) {
        if status.role == StateRole::Leader {
            match self.leaders.get(&status.term) {
                Some(&other) if other != status.id => self.violate(
                    "at most one leader per term",
                    format!(
                        "replicas {other} and {} both led term {}",
                        status.id, status.term
                    ),
                ),
                Some(_) => {}
                None => {
                    self.leaders.insert(status.term, status.id);
                    let (id, term) = (status.id, status.term);
                    self.note(|| format!("replica {id} leads term {term}"));
                }
            }
        }
    }
}
