//! Checks over the client-visible history: the workload's own invariant, and
//! linearizability ([`crate::linearizability`]).

use crate::linearizability::{self, Verdict};
use crate::workload::Workload;
use crate::world::Simulation;

/// Steps the linearizability search may take per run before it gives up on a key.
const LINEARIZABILITY_BUDGET: u64 = 2_000_000;

impl<W: Workload> Simulation<W> {
    /// Checks the workload's invariant, then linearizability. Returns whether the
    /// later checks may run (no violation found).
    pub(in crate::world) fn check_history(&mut self) -> bool {
        if let Err(detail) = self.workload.check_history(&self.history) {
            self.violate("the workload's invariant", detail);
            return false;
        }
        match linearizability::check(&self.workload, &self.history, LINEARIZABILITY_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::Violation { key, operations } => {
                let shown: Vec<String> = operations.iter().take(24).cloned().collect();
                self.violate(
                    "linearizability",
                    format!(
                        "key {key} has no valid order:\n    {}",
                        shown.join("\n    ")
                    ),
                );
                return false;
            }
            Verdict::Inconclusive { keys } => {
                let k = keys.clone();
                self.note(|| format!("linearizability inconclusive for keys {k:?} (budget spent)"));
                self.inconclusive = keys;
            }
        }
        true
    }
}
