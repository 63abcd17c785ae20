//! Per-link counters, updated by the connection tasks with relaxed atomics and
//! read by tests as a [`LinkStats`] snapshot for assertions.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one link's counters. "from" is the link's dialling endpoint,
/// "to" the endpoint whose listener it forwards to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkStats {
    /// Bytes written to the target (from → to).
    pub bytes_from_to: u64,
    /// Bytes written back to the dialler (to → from).
    pub bytes_to_from: u64,
    /// Bytes read from the dialler and thrown away by a black hole.
    pub bytes_discarded: u64,
    /// Connections accepted on the link's listener.
    pub connections_accepted: u64,
    /// Connections reset as soon as they were accepted (a `Reset` cut, the
    /// per-link connection bound, no target address yet, or the target
    /// refusing).
    pub connections_refused: u64,
    /// Established connections aborted with RST (on demand, by a `Reset` cut,
    /// by the seeded reset chance, when a black hole ended, or because one
    /// side failed).
    pub connections_reset: u64,
    /// Connections currently open on the link.
    pub connections_live: u64,
    /// Upstream connects that failed or timed out (each also counts as refused).
    pub upstream_connect_failures: u64,
}

/// The live counters behind [`LinkStats`].
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    pub(crate) bytes_from_to: AtomicU64,
    pub(crate) bytes_to_from: AtomicU64,
    pub(crate) bytes_discarded: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) connections_reset: AtomicU64,
    pub(crate) connections_live: AtomicU64,
    pub(crate) upstream_connect_failures: AtomicU64,
}

impl LinkCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LinkStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkStats {
            bytes_from_to: get(&self.bytes_from_to),
            bytes_to_from: get(&self.bytes_to_from),
            bytes_discarded: get(&self.bytes_discarded),
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            connections_reset: get(&self.connections_reset),
            connections_live: get(&self.connections_live),
            upstream_connect_failures: get(&self.upstream_connect_failures),
        }
    }
}
