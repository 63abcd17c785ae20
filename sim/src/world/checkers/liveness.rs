//! Liveness: once the faults heal, every pending operation finishes and every
//! replica converges within a bound, unless no connected majority is left (a
//! legitimate stall, not a bug).

use std::collections::BTreeSet;

use crate::workload::Workload;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// The largest set of running voters that can all reach each other.
    pub(in crate::world) fn largest_connected(&self) -> usize {
        let alive: Vec<usize> = self
            .voter_hosts()
            .into_iter()
            .filter(|&h| self.hosts[h].replica.is_some())
            .collect();
        let mut seen = BTreeSet::new();
        let mut best = 0;
        for &start in &alive {
            if !seen.insert(start) {
                continue;
            }
            let mut size = 0;
            let mut stack = vec![start];
            while let Some(a) = stack.pop() {
                size += 1;
                for &b in &alive {
                    let linked = !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a));
                    if linked && seen.insert(b) {
                        stack.push(b);
                    }
                }
            }
            best = best.max(size);
        }
        best
    }

    pub(in crate::world) fn liveness_timeout(&mut self) {
        // The final membership's voters decide.
        let n = self.voter_hosts().len().max(1);
        if self.lost_count() > (n - 1) / 2 {
            return; // reported as a stall by final_checks
        }
        if self.largest_connected() <= n / 2 {
            let biggest = self.largest_connected();
            self.stall = Some(format!(
                "no connected majority after the liveness bound: the largest group of \
                 running replicas that reach each other has {biggest} of {n}"
            ));
            return;
        }
        let pending: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.current
                    .as_ref()
                    .map(|p| format!("client {i}: {}", self.workload.describe(&p.op, None)))
            })
            .collect();
        let members = self.member_hosts();
        let behind: Vec<String> = members
            .iter()
            .map(|&h| &self.hosts[h])
            .filter(|h| h.lost.is_none())
            .map(|h| match &h.replica {
                Some(r) => {
                    let s = r.status();
                    format!(
                        "replica {} {:?} term {} commit {} applied {}",
                        h.id, s.role, s.term, s.commit, s.applied
                    )
                }
                None => format!("replica {} down", h.id),
            })
            .collect();
        self.violate(
            "liveness: pending operations finish once faults heal",
            format!(
                "{} ms after healing: pending {pending:?}; replicas {behind:?}",
                self.opts.liveness_ms
            ),
        );
    }
}
