//! The fault schedule of the safety phase: every [`CHAOS_STEP_US`] it draws
//! partitions and heals, crashes (between events or armed at the next write),
//! clock jumps, HSM outages, bit flips (in the log, or in a snapshot file)
//! and disk rollbacks, each at its rate in
//! [`Faults`](crate::Faults), then the operator's membership and preference steps.

use std::collections::BTreeSet;

use rand::Rng;
use vaultfleet::storage::WrapperRecord;
use vaultfleet::LogStore;

use super::events::Event;
use super::network::Partition;
use super::{Phase, Simulation};
use crate::disk::CrashPoint;
use crate::workload::Workload;

/// Virtual time between two draws of the fault schedule, in µs.
pub(super) const CHAOS_STEP_US: u64 = 100_000;

impl<W: Workload> Simulation<W> {
    pub(super) fn chaos(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        self.schedule(CHAOS_STEP_US, Event::Chaos);
        let f = self.opts.faults.clone();
        let n = self.hosts.len();
        if matches!(self.partition, Partition::None) && self.rng.gen_bool(f.partition_rate) {
            self.start_partition();
        }
        if matches!(self.partition, Partition::Active) && self.rng.gen_bool(f.heal_rate.min(1.0)) {
            self.schedule(0, Event::Heal);
        }
        if self.rng.gen_bool(f.crash_rate) {
            let h = self.rng.gen_range(0..n);
            // A third of crashes strike between events; the others are armed to
            // cut the replica's next write before or after its data is durable.
            let up = self.hosts[h].replica.is_some();
            match self.rng.gen_range(0..3) {
                0 => self.crash_host(h, "crash fault"),
                1 if up => self.hosts[h].disk.arm(CrashPoint::BeforeSync),
                _ if up => self.hosts[h].disk.arm(CrashPoint::AfterSync),
                _ => {}
            }
        }
        if self.rng.gen_bool(f.clock_jump_rate) {
            let h = self.rng.gen_range(0..n);
            let jump = self.rng.gen_range(1..=self.opts.election_ticks as u64);
            if let Some(r) = self.hosts[h].replica.as_mut() {
                for _ in 0..jump {
                    r.tick();
                }
                self.stats.clock_jumps += 1;
                let id = self.hosts[h].id;
                self.note(|| format!("clock of replica {id} jumps {jump} ticks"));
                self.pump(h);
            }
        }
        if self.rng.gen_bool(f.hsm_outage_rate) {
            let h = self.rng.gen_range(0..n);
            self.hosts[h].hsm.set_available(false);
            self.stats.hsm_outages += 1;
            let id = self.hosts[h].id;
            self.note(|| format!("HSM of replica {id} stops answering"));
            let back = self.rng.gen_range(100_000..2_000_000);
            self.schedule(back, Event::HsmBack { host: h });
        }
        let lossy = f.bit_flip_rate > 0.0 && self.rng.gen_bool(f.bit_flip_rate);
        let rollback = f.rollback_rate > 0.0 && self.rng.gen_bool(f.rollback_rate);
        if lossy || rollback {
            self.damage_a_disk(rollback);
        }
        self.membership_step();
        self.preference_step();
    }

    /// Under streamed sealed snapshots, half the bit flips go to the snapshot
    /// file the durable snapshot names (when the disk holds one). Draws
    /// nothing otherwise, so other runs keep their traces.
    fn damage_snapshot_file(&mut self, h: usize) -> Option<String> {
        if !self.opts.streamed_snapshots || !self.opts.sealed || !self.rng.gen_bool(0.5) {
            return None;
        }
        self.hosts[h].disk.damage_snapshot_file(&mut self.rng)
    }

    /// Whether some member holds a configuration whose voters already count
    /// as many unhealthy as a minority of them may: a running member the one
    /// it reports, a member that is down the one it held when it crashed.
    ///
    /// raft-rs takes a configuration when it applies it, so a replica that has
    /// not applied a committed removal still elects among the older voters,
    /// the removed one included (the Raft dissertation's rule, the newest
    /// configuration in the log, would elect among the newer). Seed 91474
    /// (`--workload vault --membership 0.5 --prefer 0.05`): a removal
    /// committed, only its leader learned it, and that leader's disk was rolled
    /// back; the four survivors held the eight voters of before, four of them
    /// lost (the removed one among them, its disk damaged too), while the budget
    /// had counted the seven of after. The fleet could never elect again: a
    /// stall the faults caused beyond what the configurations in use tolerate.
    ///
    /// A member that is joining holds no configuration until its first
    /// snapshot (an empty list), which says nothing and is skipped. A member
    /// keeps a change it applied across a restart (the engine makes the
    /// change's commit durable first), but one that took a newer
    /// configuration from a snapshot and crashed before that cycle's sync
    /// comes back on the older one; that is not counted.
    fn a_held_configuration_at_its_limit(&self) -> bool {
        let held: BTreeSet<Vec<u64>> = self
            .member_hosts()
            .into_iter()
            .filter(|&h| self.hosts[h].lost.is_none())
            .map(|h| match &self.hosts[h].replica {
                Some(r) => r.status().voters,
                None => self.hosts[h].voters_held.clone(),
            })
            .filter(|voters| !voters.is_empty())
            .collect();
        held.iter().any(|voters| {
            let unhealthy = voters
                .iter()
                .filter(|&&id| {
                    let h = (id - 1) as usize;
                    debug_assert!(h < self.hosts.len(), "host {h} of replica {id}");
                    h < self.hosts.len() && self.unhealthy(h)
                })
                .count();
            unhealthy >= (voters.len() - 1) / 2
        })
    }

    /// Flips a bit in, or rolls back, a down replica's disk, keeping the number of
    /// replicas lost for good below a majority.
    pub(super) fn damage_a_disk(&mut self, rollback: bool) {
        if !self.opts.sealed && !self.opts.damage_unsealed {
            // A plain store cannot detect damage; only the checker's own test asks for it.
            return;
        }
        let n = self.hosts.len();
        // Lost for good counts among the members (voters and learners, which may
        // be promoted), below a minority of the voters.
        // A voter the operator's plan removes may leave at any moment (its
        // removal may be in flight and commit later): the budget is that of
        // the voters without it (seed 569 lost its majority when a damage
        // raced a pending removal).
        let leaving = match self.churn.plan {
            Some(super::membership::Plan::Shrink { old, .. })
            | Some(super::membership::Plan::Replace { old, .. }) => Some(old),
            _ => None,
        };
        let voters = self
            .voter_hosts()
            .into_iter()
            .filter(|&h| Some(self.hosts[h].id) != leaving)
            .count()
            .max(1);
        let f = self.opts.lost_replicas_max.unwrap_or((voters - 1) / 2);
        let lost = self
            .member_hosts()
            .into_iter()
            .filter(|&h| self.unhealthy(h))
            .count();
        if lost >= f {
            return;
        }
        if self.opts.lost_replicas_max.is_none() && self.a_held_configuration_at_its_limit() {
            return;
        }
        let h = self.rng.gen_range(0..n);
        if self.hosts[h].lost.is_some() || self.hosts[h].damaged.is_some() {
            return;
        }
        self.crash_host(h, "crash before its disk is damaged");
        let id = self.hosts[h].id;
        if rollback {
            let current = self.hosts[h].disk.image();
            let now = self.hsm_counter(h);
            let sealed = self.opts.sealed;
            // Only an image that lacks an acknowledged write is a harmful rollback.
            // Under a sealed store an image taken at counter c holds head c or
            // c + 1 (a write durable but not yet counted, never acknowledged); so
            // it lacks an acknowledged write once the counter reached c + 2. A
            // plain store cannot tell, so any older differing image will do.
            let harmful = |(i, c): &&(vaultfleet::MemLog, u64)| {
                if sealed {
                    now.is_some_and(|now| c + 2 <= now)
                } else {
                    i.wrapper_record() != current.wrapper_record()
                        || i.last() != current.last()
                        || i.hard_state() != current.hard_state()
                }
            };
            let Some((older, _)) = self.hosts[h].images.iter().rev().find(harmful).cloned() else {
                return;
            };
            self.hosts[h].disk.restore(older);
            self.hosts[h].damaged = Some("a rollback of its disk to an older image".into());
            self.stats.rollbacks += 1;
            self.note(|| format!("disk of replica {id} rolled back to an older image"));
        } else if let Some(what) = self.damage_snapshot_file(h) {
            self.hosts[h].damaged = Some(format!("a bit flip in its {what}"));
            self.hosts[h].damaged_file = true;
            self.stats.bit_flips += 1;
            self.stats.snapshot_file_flips += 1;
            self.note(|| format!("bit flipped on replica {id}'s disk: {what}"));
        } else if let Some(what) = self.hosts[h].disk.flip_bit(&mut self.rng) {
            self.hosts[h].damaged = Some(format!("a bit flip in {what}"));
            self.stats.bit_flips += 1;
            self.note(|| format!("bit flipped on replica {id}'s disk: {what}"));
        }
    }
}
