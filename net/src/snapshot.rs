//! Reassembling chunked snapshots on the receiving side of one connection.
//!
//! A snapshot arrives as chunk frames (`wire::frame`, kind 5) of one encoded
//! `MsgSnapshot`, in order, on one connection. The [`Reassembler`] keeps one
//! partial snapshot per (group, from, to) and accepts a chunk only if:
//!
//! * `total` is in `1..=snapshot_bytes_max`;
//! * offset 0 starts a snapshot (replacing, and abandoning, a partial one of the
//!   same key); any other offset continues the partial one of the same index,
//!   term and total, exactly where it stopped;
//! * the chunk ends within `total`;
//! * every partial snapshot of the connection together stays within
//!   `snapshot_bytes_max` bytes.
//!
//! A refused chunk drops its key's partial snapshot (the sender's next try
//! starts again at offset 0). A partial snapshot with no chunk for
//! `snapshot_chunk_timeout` is dropped ([`Reassembler::expire`]). Buffers grow
//! with the data received (at most doubling, never beyond `total`), so a chunk
//! announcing a large total costs nothing until its bytes arrive.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::wire::frame::ChunkHeader;

/// (group, from, to).
type Key = (u64, u64, u64);

struct Partial {
    index: u64,
    term: u64,
    total: u64,
    data: Vec<u8>,
    last_chunk: Instant,
}

/// Why a chunk was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkRefusal {
    /// `total` is zero or above `snapshot_bytes_max`.
    Total,
    /// Not offset 0 and not the continuation of the partial snapshot.
    OutOfOrder,
    /// The chunk ends beyond `total`.
    BeyondTotal,
    /// The connection's partial snapshots would exceed `snapshot_bytes_max`.
    OverBudget,
}

/// What a chunk did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Buffered; `abandoned` partial snapshots were replaced by it (0 or 1).
    Incomplete {
        /// Partial snapshots dropped for this one.
        abandoned: u64,
    },
    /// The snapshot is whole: its encoding.
    Complete {
        /// The encoded raft message.
        bytes: Vec<u8>,
        /// Partial snapshots dropped for this one.
        abandoned: u64,
    },
    /// Refused; the key's partial snapshot, if any, is dropped.
    Refused(ChunkRefusal),
}

/// The partial snapshots of one connection.
pub(crate) struct Reassembler {
    bytes_max: u64,
    timeout: Duration,
    buffered: u64,
    partial: BTreeMap<Key, Partial>,
}

impl Reassembler {
    pub fn new(bytes_max: u64, timeout: Duration) -> Self {
        Self {
            bytes_max,
            timeout,
            buffered: 0,
            partial: BTreeMap::new(),
        }
    }

    fn remove(&mut self, key: &Key) -> bool {
        match self.partial.remove(key) {
            Some(p) => {
                self.buffered -= p.data.len() as u64;
                true
            }
            None => false,
        }
    }

    /// Takes one chunk received at `now`.
    pub fn push(&mut self, now: Instant, header: ChunkHeader, data: &[u8]) -> Chunk {
        let key = (header.raft.group, header.raft.from, header.raft.to);
        let len = data.len() as u64;
        let mut abandoned = 0;
        if header.total == 0 || header.total > self.bytes_max {
            self.remove(&key);
            return Chunk::Refused(ChunkRefusal::Total);
        }
        if header.offset == 0 {
            if self.remove(&key) {
                abandoned = 1;
            }
            self.partial.insert(
                key,
                Partial {
                    index: header.index,
                    term: header.term,
                    total: header.total,
                    data: Vec::new(),
                    last_chunk: now,
                },
            );
        } else {
            let continues = self.partial.get(&key).is_some_and(|p| {
                p.index == header.index
                    && p.term == header.term
                    && p.total == header.total
                    && p.data.len() as u64 == header.offset
            });
            if !continues {
                self.remove(&key);
                return Chunk::Refused(ChunkRefusal::OutOfOrder);
            }
        }
        if header.offset.saturating_add(len) > header.total {
            self.remove(&key);
            return Chunk::Refused(ChunkRefusal::BeyondTotal);
        }
        if self.buffered.saturating_add(len) > self.bytes_max {
            self.remove(&key);
            return Chunk::Refused(ChunkRefusal::OverBudget);
        }
        let Some(partial) = self.partial.get_mut(&key) else {
            return Chunk::Refused(ChunkRefusal::OutOfOrder);
        };
        let needed = partial.data.len() + data.len();
        if partial.data.capacity() < needed {
            // Grow at most to twice what arrived, never beyond the total.
            let total = usize::try_from(partial.total).unwrap_or(usize::MAX);
            let target = needed.saturating_mul(2).min(total).max(needed);
            partial.data.reserve_exact(target - partial.data.len());
        }
        partial.data.extend_from_slice(data);
        partial.last_chunk = now;
        self.buffered += len;
        if partial.data.len() as u64 == partial.total {
            let whole = self
                .partial
                .remove(&key)
                .map(|p| p.data)
                .unwrap_or_default();
            self.buffered -= whole.len() as u64;
            return Chunk::Complete {
                bytes: whole,
                abandoned,
            };
        }
        Chunk::Incomplete { abandoned }
    }

    /// Drops the partial snapshots with no chunk since `now - timeout`;
    /// returns how many.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let stale: Vec<Key> = self
            .partial
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_chunk) >= self.timeout)
            .map(|(&k, _)| k)
            .collect();
        for key in &stale {
            self.remove(key);
        }
        stale.len() as u64
    }

    /// Bytes buffered in partial snapshots.
    #[cfg(test)]
    pub fn buffered(&self) -> u64 {
        self.buffered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::RaftHeader;

    fn header(offset: u64, total: u64) -> ChunkHeader {
        ChunkHeader {
            raft: RaftHeader {
                group: 1,
                from: 2,
                to: 1,
            },
            index: 10,
            term: 3,
            offset,
            total,
        }
    }

    #[test]
    fn review_net_3_chunks_reassemble_only_in_order_within_the_bounds() {
        let now = Instant::now();
        let mut r = Reassembler::new(10, Duration::from_secs(1));
        assert_eq!(
            r.push(now, header(0, 6), b"abc"),
            Chunk::Incomplete { abandoned: 0 }
        );
        // A gap, a replay and a changed total are refused and drop the partial.
        assert_eq!(
            r.push(now, header(4, 6), b"ef"),
            Chunk::Refused(ChunkRefusal::OutOfOrder)
        );
        assert_eq!(r.buffered(), 0);
        r.push(now, header(0, 6), b"abc");
        assert_eq!(
            r.push(now, header(3, 7), b"def"),
            Chunk::Refused(ChunkRefusal::OutOfOrder)
        );
        r.push(now, header(0, 6), b"abc");
        assert_eq!(
            r.push(now, header(3, 6), b"defg"),
            Chunk::Refused(ChunkRefusal::BeyondTotal)
        );
        r.push(now, header(0, 6), b"abc");
        assert_eq!(
            r.push(now, header(3, 6), b"def"),
            Chunk::Complete {
                bytes: b"abcdef".to_vec(),
                abandoned: 0
            }
        );
        assert_eq!(r.buffered(), 0);
        // Totals above the limit, or partials together above it, are refused.
        assert_eq!(
            r.push(now, header(0, 11), b"a"),
            Chunk::Refused(ChunkRefusal::Total)
        );
        assert_eq!(
            r.push(now, header(0, 0), b"a"),
            Chunk::Refused(ChunkRefusal::Total)
        );
        r.push(now, header(0, 10), b"abcdefgh");
        let mut other = header(0, 10);
        other.raft.to = 4;
        assert_eq!(
            r.push(now, other, b"abc"),
            Chunk::Refused(ChunkRefusal::OverBudget)
        );
        // A new start replaces the partial one; a stale partial expires.
        assert_eq!(
            r.push(now, header(0, 10), b"a"),
            Chunk::Incomplete { abandoned: 1 }
        );
        assert_eq!(r.expire(now + Duration::from_millis(500)), 0);
        assert_eq!(r.expire(now + Duration::from_secs(1)), 1);
        assert_eq!(r.buffered(), 0);
    }
}
