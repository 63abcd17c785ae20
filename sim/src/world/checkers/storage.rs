//! Damaged storage is detected, never served; and no false alarm after an
//! honest crash: a store refused without damage is a bug.

use vaultfleet::StorageError;

use crate::workload::Workload;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// Host `h`'s store opened: fails if its disk had been damaged (the store
    /// should have refused it). Returns whether it failed.
    pub(in crate::world) fn opened_damaged_store(&mut self, h: usize) -> bool {
        let id = self.hosts[h].id;
        if let Some(damage) = self.hosts[h].damaged.take() {
            // The store opened although its disk was damaged.
            self.violate(
                "damaged storage is detected, never served",
                format!("replica {id} opened its store after {damage}"),
            );
            return true;
        }
        false
    }

    /// Host `h`'s replica refused to start from its damaged snapshot file
    /// (`why`): expected, the replica is lost for good.
    pub(in crate::world) fn refused_damaged_file(&mut self, h: usize, why: String) {
        let id = self.hosts[h].id;
        self.note(|| format!("replica {id} refused its damaged snapshot file: {why}"));
        self.hosts[h].damaged = None;
        self.hosts[h].damaged_file = false;
        self.hosts[h].lost = Some(why);
        self.stats.replicas_lost += 1;
    }

    /// Host `h`'s store refused to open with `e`: expected after damage (the
    /// replica is then lost for good) or while its HSM is out (retried), a false
    /// alarm otherwise.
    pub(in crate::world) fn store_refused(&mut self, h: usize, e: StorageError) {
        let id = self.hosts[h].id;
        match e {
            StorageError::Hsm(vaultfleet::HsmError::Unavailable { .. }) => {
                self.start_failed(h, e.to_string(), true)
            }
            StorageError::Tampered { .. }
            | StorageError::RolledBack { .. }
            | StorageError::Forked { .. }
                if self.hosts[h].damaged.is_some() && !self.hosts[h].damaged_file =>
            {
                let reason = e.to_string();
                self.note(|| format!("replica {id} refused its damaged store: {reason}"));
                self.hosts[h].damaged = None;
                self.hosts[h].lost = Some(reason);
                self.stats.replicas_lost += 1;
            }
            other => self.violate(
                "no false alarm after an honest crash",
                format!("replica {id}'s store was refused: {other}"),
            ),
        }
    }
}
