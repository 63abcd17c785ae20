//! Every replica applies the same command at the same index (Raft's state
//! machine safety), checked on the digests [`Recorder`](crate::world::hosts)
//! logs at every apply.

use crate::workload::Workload;
use crate::world::Simulation;

impl<W: Workload> Simulation<W> {
    /// Compares every apply since the last check against the first seen at its
    /// index and position.
    pub(in crate::world) fn check_same_command_at_each_index(&mut self) {
        let applied = std::mem::take(&mut *self.apply_log.lock());
        for a in applied {
            match self.applied.get(&(a.index, a.position)) {
                Some(&(digest, host)) if digest != a.digest => self.violate(
                    "all replicas apply the same command at the same index",
                    format!(
                        "at index {} (command {} of the entry) replica {} applied {:#x}, \
                         replica {host} applied {digest:#x}",
                        a.index, a.position, a.host, a.digest
                    ),
                ),
                Some(_) => {}
                None => {
                    self.applied
                        .insert((a.index, a.position), (a.digest, a.host));
                }
            }
        }
    }
}
