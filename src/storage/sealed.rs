//! `Sealed<L, H>`: a [`LogStore`] that keeps any other store on an untrusted disk.
//!
//! The host that runs a replica may read, edit, reorder or roll back its files.
//! `Sealed` wraps an inner store (normally [`SledLog`]) and hands
//! it only sealed records, so the inner store's disk learns nothing and can change
//! nothing unnoticed:
//!
//! * **Batches.** The entries appended in one Ready cycle are sealed as one AEAD
//!   record by the HSM. Its associated data binds the group, the replica, the index
//!   range, the last term and the digest of the batch before it (a hash chain). The
//!   inner store keeps the record in the batch's first entry and empty placeholders
//!   (same index and term) for the others, so it can still truncate and compact by
//!   index. A conflicting append inside a batch re-seals that batch's surviving
//!   prefix with the new entries; compaction keeps whole batches.
//! * **Snapshots** are sealed whole, bound to their index and term.
//! * **The head**, sealed on every `sync`, names the whole durable state: the write
//!   counter, the hard state, the snapshot's digest, the log's offset and end, and
//!   the digest of the newest batch. Walking the chain from the first batch must
//!   end at that digest.
//! * **Rollback.** Each `sync` writes head `n + 1` (naming the digest of head `n`),
//!   makes it durable, then advances the HSM's monotonic counter to `n + 1` with
//!   the new head's digest as its binding, and only then returns (so only then can
//!   the replica acknowledge). On open, a head older than the counter is a
//!   rollback; a head at the counter must be the very head the counter is bound
//!   to, and a head exactly one ahead (a crash between "durable" and "counter
//!   advanced", which is completed, not reported) must follow it. A head that
//!   fails either is a write that was abandoned and later replaced: a fork.
//!
//! Every read raft-rs makes is served from a decrypted in-memory copy, so the HSM
//! is called once per batch and once per `sync`, never on the hot read path.
//! `docs/storage.md` gives the format, the write order and what each check catches.
//!
//! `Sealed` relies on the inner store making each `sync`'s writes durable as a
//! whole, which the [`AtomicSync`] bound states ([`MemLog`] and `SledLog` do).

use std::collections::BTreeMap;

use protobuf2::Message as _;
use raft::prelude::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::{AtomicSync, LogStore, MemLog, SledLog, StorageError};
use crate::hsm::{Hsm, HsmError, KeyHandle, KeyKind};
use crate::ReplicaId;

const FORMAT_VERSION: u8 = 1;
const AD_BATCH: &[u8] = b"vaultfleet/sealed-log/batch/v1";
const AD_SNAPSHOT: &[u8] = b"vaultfleet/sealed-log/snapshot/v1";
const AD_HEAD: &[u8] = b"vaultfleet/sealed-log/head/v1";

type Digest = [u8; 32];

/// Which sealed record a [`StorageError::Tampered`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SealedRecord {
    /// The sealed head (the description of the whole durable state).
    Head,
    /// The hard state (term, vote, commit).
    HardState,
    /// The snapshot at this index.
    Snapshot {
        /// Index of the snapshot.
        index: u64,
    },
    /// The batch sealing entries `first..=last`.
    Batch {
        /// First index of the batch.
        first: u64,
        /// Last index of the batch.
        last: u64,
    },
    /// The entry at this index.
    Entry {
        /// Index of the entry.
        index: u64,
    },
    /// A record the inner store itself could not read back (its own structural
    /// checks failed before any seal was checked).
    Container {
        /// What the inner store reported as unreadable.
        what: String,
    },
}

impl std::fmt::Display for SealedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealedRecord::Head => f.write_str("sealed head"),
            SealedRecord::HardState => f.write_str("hard state"),
            SealedRecord::Snapshot { index } => write!(f, "snapshot at index {index}"),
            SealedRecord::Batch { first, last } => write!(f, "batch of entries {first}..={last}"),
            SealedRecord::Entry { index } => write!(f, "entry {index}"),
            SealedRecord::Container { what } => write!(f, "inner store's {what}"),
        }
    }
}

/// Where a [`Sealed`] store's key and counter live in the HSM, and whose store it is.
#[derive(Clone, Debug)]
pub struct SealedConfig {
    /// The raft group; bound into every sealed record.
    pub group: u64,
    /// The replica; bound into every sealed record.
    pub replica: ReplicaId,
    /// Label of the AEAD key that seals the store.
    pub key_label: String,
    /// Label of the HSM's monotonic counter for this store.
    pub counter_label: String,
}

impl SealedConfig {
    /// The default labels for `replica` of `group`. A replica re-added as a fresh
    /// member gets a new id, hence a new key and a new counter.
    pub fn new(group: u64, replica: ReplicaId) -> Self {
        Self {
            group,
            replica,
            key_label: format!("vaultfleet/log-seal/group-{group}/replica-{replica}"),
            counter_label: format!("vaultfleet/log-counter/group-{group}/replica-{replica}"),
        }
    }

    fn ad(&self, domain: &[u8], header: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(domain.len() + 16 + header.len());
        ad.extend_from_slice(domain);
        ad.extend_from_slice(&self.group.to_be_bytes());
        ad.extend_from_slice(&self.replica.to_be_bytes());
        ad.extend_from_slice(header);
        ad
    }
}

#[derive(Clone, Copy, Debug)]
struct BatchMeta {
    last: u64,
    prev: Digest,
    digest: Digest,
}

/// The clear header in front of a sealed batch (also part of its associated data).
struct BatchHeader {
    first: u64,
    last: u64,
    last_term: u64,
    prev: Digest,
}

const BATCH_HEADER_LEN: usize = 1 + 8 * 3 + 32;

impl BatchHeader {
    fn encode(&self) -> [u8; BATCH_HEADER_LEN] {
        let mut h = [0u8; BATCH_HEADER_LEN];
        h[0] = FORMAT_VERSION;
        h[1..9].copy_from_slice(&self.first.to_be_bytes());
        h[9..17].copy_from_slice(&self.last.to_be_bytes());
        h[17..25].copy_from_slice(&self.last_term.to_be_bytes());
        h[25..].copy_from_slice(&self.prev);
        h
    }

    fn decode(blob: &[u8]) -> Option<Self> {
        if blob.len() < BATCH_HEADER_LEN || blob[0] != FORMAT_VERSION {
            return None;
        }
        Some(Self {
            first: be64(&blob[1..9]),
            last: be64(&blob[9..17]),
            last_term: be64(&blob[17..25]),
            prev: blob[25..BATCH_HEADER_LEN].try_into().ok()?,
        })
    }
}

/// The sealed description of everything durable, written on every `sync`.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    counter: u64,
    term: u64,
    vote: u64,
    commit: u64,
    snapshot_index: u64,
    snapshot_term: u64,
    snapshot_digest: Digest,
    offset_index: u64,
    offset_term: u64,
    last_index: u64,
    tail_digest: Digest,
    /// Digest of the head this one replaces (the binding of the HSM counter at
    /// `counter - 1`).
    prev_head: Digest,
}

const HEAD_LEN: usize = 1 + 8 * 9 + 32 * 3;

impl Head {
    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEAD_LEN);
        h.push(FORMAT_VERSION);
        for v in [
            self.counter,
            self.term,
            self.vote,
            self.commit,
            self.snapshot_index,
            self.snapshot_term,
            self.offset_index,
            self.offset_term,
            self.last_index,
        ] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        h.extend_from_slice(&self.snapshot_digest);
        h.extend_from_slice(&self.tail_digest);
        h.extend_from_slice(&self.prev_head);
        h
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != HEAD_LEN || b[0] != FORMAT_VERSION {
            return None;
        }
        let n = |i: usize| be64(&b[1 + 8 * i..9 + 8 * i]);
        Some(Self {
            counter: n(0),
            term: n(1),
            vote: n(2),
            commit: n(3),
            snapshot_index: n(4),
            snapshot_term: n(5),
            offset_index: n(6),
            offset_term: n(7),
            last_index: n(8),
            snapshot_digest: b[73..105].try_into().ok()?,
            tail_digest: b[105..137].try_into().ok()?,
            prev_head: b[137..169].try_into().ok()?,
        })
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn digest(blob: &[u8]) -> Digest {
    Sha256::digest(blob).into()
}

/// A [`LogStore`] whose every durable byte is sealed by an [`Hsm`]; see the module
/// documentation and `docs/storage.md`.
pub struct Sealed<L, H> {
    inner: L,
    hsm: H,
    cfg: SealedConfig,
    key: KeyHandle,
    /// The decrypted, verified view every read is served from.
    cache: MemLog,
    /// Batches held by the inner store (including ones not yet synced), by first index.
    batches: BTreeMap<u64, BatchMeta>,
    /// Chain predecessor of the next batch when `batches` is empty.
    anchor: Digest,
    snapshot_digest: Digest,
    /// The write counter of the newest durable head (equal to the HSM's counter).
    counter: u64,
    /// Digest of the newest durable head (the binding of the HSM's counter).
    head_digest: Digest,
    /// Lowest index appended since the last batch was sealed.
    pending_from: Option<u64>,
    /// Something changed since the last durable head.
    dirty: bool,
    poisoned: Option<String>,
}

impl<L: std::fmt::Debug, H> std::fmt::Debug for Sealed<L, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("replica", &self.cfg.replica)
            .field("group", &self.cfg.group)
            .field("counter", &self.counter)
            .field("batches", &self.batches.len())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<L: AtomicSync, H: Hsm> Sealed<L, H> {
    /// Opens a sealed store over `inner`, checking every sealed record and the
    /// HSM's counter, and completing a counter advance a crash interrupted.
    ///
    /// An empty inner store starts a new sealed store (its key is generated in the
    /// HSM if missing) — unless the HSM's counter shows that this replica's store
    /// was written before, which is a rollback to an empty disk.
    ///
    /// # Errors
    /// [`StorageError::Tampered`] names the first record that fails its check,
    /// [`StorageError::RolledBack`] an image older than the counter,
    /// [`StorageError::CounterBehind`] a counter that is behind the disk, and
    /// [`StorageError::Hsm`] an HSM that does not answer or lacks the key.
    pub fn open(inner: L, hsm: H, cfg: SealedConfig) -> Result<Self, StorageError> {
        let replica = cfg.replica;
        let hsm_counter = hsm.counter(&cfg.counter_label)?;
        let record = inner.wrapper_record().to_vec();
        let head_digest = digest(&record);
        if record.is_empty() {
            let untouched = inner.last_index().unwrap_or(1) == 0
                && inner.latest_snapshot().get_metadata().index == 0
                && *inner.hard_state() == HardState::default();
            if !untouched {
                return Err(StorageError::Tampered {
                    replica,
                    record: SealedRecord::Head,
                    detail: "the store holds a log but no sealed head: it was not written \
                             by a sealed store, or its head was removed"
                        .into(),
                });
            }
            if hsm_counter.value > 0 {
                return Err(StorageError::RolledBack {
                    replica,
                    disk: 0,
                    hsm: hsm_counter.value,
                });
            }
            let key = hsm.key(&cfg.key_label, KeyKind::Aead)?;
            return Ok(Self {
                inner,
                hsm,
                cfg,
                key,
                cache: MemLog::new(),
                batches: BTreeMap::new(),
                anchor: [0; 32],
                snapshot_digest: [0; 32],
                counter: 0,
                head_digest: [0; 32],
                pending_from: None,
                dirty: false,
                poisoned: None,
            });
        }
        let key = hsm
            .find_key(&cfg.key_label, KeyKind::Aead)?
            .ok_or_else(|| HsmError::NoSuchKey {
                label: cfg.key_label.clone(),
                kind: KeyKind::Aead,
            })?;
        let tampered = |record: SealedRecord, detail: String| StorageError::Tampered {
            replica,
            record,
            detail,
        };
        let unsealed = |record: SealedRecord, e: HsmError| match e {
            HsmError::Unauthentic | HsmError::Malformed(_) => tampered(
                record,
                format!("{e}: edited, or sealed for another replica or group"),
            ),
            other => StorageError::Hsm(other),
        };

        let head_plain = hsm
            .unseal(key, &cfg.ad(AD_HEAD, &[]), &record)
            .map_err(|e| unsealed(SealedRecord::Head, e))?;
        let head = Head::decode(&head_plain)
            .ok_or_else(|| tampered(SealedRecord::Head, "malformed head".into()))?;
        // The counter names one head: equal counters must carry that head's
        // digest, and a head one ahead must follow it. Anything else is an
        // abandoned write that was replaced later (a forked image).
        let h = hsm_counter.value;
        if head.counter < h {
            return Err(StorageError::RolledBack {
                replica,
                disk: head.counter,
                hsm: h,
            });
        }
        if head.counter > h.saturating_add(1) {
            return Err(StorageError::CounterBehind {
                replica,
                disk: head.counter,
                hsm: h,
            });
        }
        let follows = if head.counter == h {
            head_digest == hsm_counter.binding
        } else {
            head.prev_head == hsm_counter.binding
        };
        if !follows {
            return Err(StorageError::Forked {
                replica,
                write: head.counter,
            });
        }

        // The snapshot.
        let stored = inner.latest_snapshot();
        let stored_meta = stored.get_metadata();
        let snapshot = if head.snapshot_digest == [0; 32] {
            if stored_meta.index != 0 || !stored.data.is_empty() {
                return Err(tampered(
                    SealedRecord::Snapshot {
                        index: stored_meta.index,
                    },
                    "the sealed head names no snapshot, but the store holds one".into(),
                ));
            }
            Snapshot::default()
        } else {
            let record = SealedRecord::Snapshot {
                index: head.snapshot_index,
            };
            if digest(&stored.data) != head.snapshot_digest {
                return Err(tampered(
                    record,
                    format!(
                        "the stored snapshot (index {}) is not the one the sealed head names: \
                         replaced, edited or rolled back",
                        stored_meta.index
                    ),
                ));
            }
            let plain = open_snapshot(&hsm, key, &cfg, &stored.data)
                .map_err(|e| unsealed(record.clone(), e))?;
            let snapshot = Snapshot::parse_from_bytes(&plain)
                .map_err(|e| tampered(record.clone(), format!("does not decode: {e}")))?;
            if snapshot.get_metadata() != stored_meta
                || stored_meta.index != head.snapshot_index
                || stored_meta.term != head.snapshot_term
            {
                return Err(tampered(
                    record,
                    "the clear metadata differs from the sealed one".into(),
                ));
            }
            snapshot
        };

        // The log: offset and end against the head, then every batch in order.
        let first = inner.first_index().map_err(raft_corrupt)?;
        let last = inner.last_index().map_err(raft_corrupt)?;
        let offset_term = inner.term(first - 1).map_err(raft_corrupt)?;
        if first - 1 != head.offset_index || offset_term != head.offset_term {
            return Err(tampered(
                SealedRecord::Entry { index: first },
                format!(
                    "the log starts after ({}, term {offset_term}) but the sealed head says \
                     after ({}, term {}): entries were removed or added at the front",
                    first - 1,
                    head.offset_index,
                    head.offset_term
                ),
            ));
        }
        if last != head.last_index {
            let index = last.min(head.last_index) + 1;
            return Err(tampered(
                SealedRecord::Entry { index },
                format!(
                    "the log ends at {last} but the sealed head says {}: the log was cut \
                     short or extended",
                    head.last_index
                ),
            ));
        }
        let stored_entries = if last >= first {
            inner
                .entries(first, last + 1, None, GetEntriesContext::empty(false))
                .map_err(raft_corrupt)?
        } else {
            Vec::new()
        };
        let mut batches = BTreeMap::new();
        let mut entries = Vec::with_capacity(stored_entries.len());
        let mut chain: Option<Digest> = None;
        let mut pos = 0;
        while pos < stored_entries.len() {
            let e = &stored_entries[pos];
            let Some(h) = BatchHeader::decode(&e.data) else {
                return Err(tampered(
                    SealedRecord::Entry { index: e.index },
                    if e.data.is_empty() {
                        "the entry is not covered by any sealed batch".into()
                    } else {
                        "malformed batch header".into()
                    },
                ));
            };
            let record = SealedRecord::Batch {
                first: h.first,
                last: h.last,
            };
            if h.first != e.index || h.last < h.first {
                return Err(tampered(
                    record,
                    format!("found at index {}: moved or spliced", e.index),
                ));
            }
            if h.last > last {
                return Err(tampered(
                    record,
                    format!("cut short: entries {}..={} are missing", last + 1, h.last),
                ));
            }
            if chain.is_some_and(|c| c != h.prev) {
                return Err(tampered(
                    record,
                    "does not chain to the batch before it: a batch between them was \
                     removed, replaced or reordered"
                        .into(),
                ));
            }
            let ad = cfg.ad(AD_BATCH, &e.data[..BATCH_HEADER_LEN]);
            let plain = hsm
                .unseal(key, &ad, &e.data[BATCH_HEADER_LEN..])
                .map_err(|err| unsealed(record.clone(), err))?;
            let decoded =
                decode_batch(&plain, &h).map_err(|detail| tampered(record.clone(), detail))?;
            for (j, d) in decoded.iter().enumerate() {
                let Some(s) = stored_entries.get(pos + j) else {
                    return Err(tampered(record, "cut short".into()));
                };
                if s.index != d.index || s.term != d.term || (j > 0 && !s.data.is_empty()) {
                    return Err(tampered(
                        SealedRecord::Entry { index: d.index },
                        "the stored entry differs from the sealed batch (index, term or \
                         placeholder edited)"
                            .into(),
                    ));
                }
            }
            let d = digest(&e.data);
            batches.insert(
                h.first,
                BatchMeta {
                    last: h.last,
                    prev: h.prev,
                    digest: d,
                },
            );
            chain = Some(d);
            pos += decoded.len();
            entries.extend(decoded);
        }
        if let Some(tail) = chain {
            if tail != head.tail_digest {
                let (first, meta) = batches.iter().next_back().map(|(f, m)| (*f, *m)).unzip();
                return Err(tampered(
                    SealedRecord::Batch {
                        first: first.unwrap_or(0),
                        last: meta.map(|m| m.last).unwrap_or(0),
                    },
                    "the newest batch is not the one the sealed head names: replaced by \
                     an older or foreign batch"
                        .into(),
                ));
            }
        }

        let mut hard_state = HardState::default();
        hard_state.term = head.term;
        hard_state.vote = head.vote;
        hard_state.commit = head.commit;
        let cache = MemLog::from_parts(hard_state, snapshot, (first - 1, offset_term), entries)
            .map_err(|e| match e {
                StorageError::Corrupt { detail, .. } => tampered(SealedRecord::HardState, detail),
                other => other,
            })?;

        // Everything checks out. A head one write ahead of the counter is a crash
        // after the data became durable and before the counter advanced: finish it.
        if Some(head.counter) == h.checked_add(1) {
            let now = hsm.advance_counter(&cfg.counter_label, &head_digest)?;
            if now != head.counter {
                return Err(StorageError::CounterBehind {
                    replica,
                    disk: head.counter,
                    hsm: now,
                });
            }
            tracing::info!(
                replica,
                counter = now,
                "completed the counter advance of a write interrupted by a crash"
            );
        }
        Ok(Self {
            inner,
            hsm,
            cfg,
            key,
            cache,
            batches,
            anchor: head.tail_digest,
            snapshot_digest: head.snapshot_digest,
            counter: head.counter,
            head_digest,
            pending_from: None,
            dirty: false,
            poisoned: None,
        })
    }

    /// The wrapped store (holding only sealed records).
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// The HSM.
    pub fn hsm(&self) -> &H {
        &self.hsm
    }

    /// The write counter of the newest durable head; equal to the HSM's counter.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The decrypted view of the log.
    pub fn cached(&self) -> &MemLog {
        &self.cache
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(cause) => Err(StorageError::Poisoned {
                replica: self.cfg.replica,
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs an effectful step; a failure leaves the store's state unknown, so it
    /// refuses every later write until reopened.
    fn guarded<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.check_usable()?;
        let result = step(self);
        if let Err(e) = &result {
            self.poisoned = Some(e.to_string());
        }
        result
    }

    fn tail_digest(&self) -> Digest {
        self.batches
            .values()
            .next_back()
            .map_or(self.anchor, |m| m.digest)
    }

    /// Seals the entries appended since the last batch as one batch and hands it to
    /// the inner store.
    fn flush_entries(&mut self) -> Result<(), StorageError> {
        let Some(from) = self.pending_from.take() else {
            return Ok(());
        };
        let (start, prev) = match self.batches.range(..=from).next_back() {
            // An append inside a batch re-seals the batch's surviving prefix.
            Some((&first, meta)) if meta.last >= from => (first, meta.prev),
            Some((_, meta)) => (from, meta.digest),
            None => (from, self.anchor),
        };
        self.batches.split_off(&start);
        let last = self.cache.last();
        if last < start {
            return Ok(());
        }
        let mut encoded = Vec::with_capacity((last - start + 1) as usize);
        let mut total = 0usize;
        for index in start..=last {
            let e = self
                .cache
                .entry(index)
                .ok_or_else(|| StorageError::Corrupt {
                    what: format!("entry {index}"),
                    detail: "missing from the sealed store's cache".into(),
                })?;
            let bytes =
                Zeroizing::new(e.write_to_bytes().map_err(|err| StorageError::Corrupt {
                    what: format!("entry {index}"),
                    detail: format!("cannot be encoded for sealing: {err}"),
                })?);
            if u32::try_from(bytes.len()).is_err() {
                return Err(StorageError::Corrupt {
                    what: format!("entry {index}"),
                    detail: format!("{} bytes is too large to seal (4 GiB at most)", bytes.len()),
                });
            }
            total += 4 + bytes.len();
            encoded.push((e.index, e.term, bytes));
        }
        // Sized up front so no reallocation leaves a copy of the plaintext behind.
        let mut plain = Zeroizing::new(Vec::with_capacity(total));
        let mut placeholders = Vec::with_capacity(encoded.len());
        for (index, term, bytes) in &encoded {
            plain.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            plain.extend_from_slice(bytes);
            let mut p = Entry::default();
            p.index = *index;
            p.term = *term;
            placeholders.push(p);
        }
        drop(encoded);
        let header = BatchHeader {
            first: start,
            last,
            last_term: placeholders.last().map_or(0, |e| e.term),
            prev,
        }
        .encode();
        let sealed = self
            .hsm
            .seal(self.key, &self.cfg.ad(AD_BATCH, &header), &plain)?;
        let mut blob = Vec::with_capacity(header.len() + sealed.len());
        blob.extend_from_slice(&header);
        blob.extend_from_slice(&sealed);
        let d = digest(&blob);
        placeholders[0].data = blob.into();
        self.inner.append(&placeholders)?;
        self.batches.insert(
            start,
            BatchMeta {
                last,
                prev,
                digest: d,
            },
        );
        self.dirty = true;
        Ok(())
    }

    fn seal_snapshot(&self, snapshot: &Snapshot) -> Result<(Snapshot, Digest), StorageError> {
        let meta = snapshot.get_metadata();
        let mut header = [0u8; 17];
        header[0] = FORMAT_VERSION;
        header[1..9].copy_from_slice(&meta.index.to_be_bytes());
        header[9..17].copy_from_slice(&meta.term.to_be_bytes());
        let plain =
            Zeroizing::new(
                snapshot
                    .write_to_bytes()
                    .map_err(|e| StorageError::Corrupt {
                        what: format!("snapshot at index {}", meta.index),
                        detail: format!("cannot be encoded for sealing: {e}"),
                    })?,
            );
        let sealed = self
            .hsm
            .seal(self.key, &self.cfg.ad(AD_SNAPSHOT, &header), &plain)?;
        let mut blob = header.to_vec();
        blob.extend_from_slice(&sealed);
        let d = digest(&blob);
        let mut out = Snapshot::default();
        out.set_metadata(meta.clone());
        out.data = blob.into();
        Ok((out, d))
    }

    /// Seals the head of the next write and hands it to the inner store; returns
    /// its digest.
    fn write_head(&mut self) -> Result<Digest, StorageError> {
        let hs = self.cache.hard_state();
        let snap = self.cache.latest_snapshot().get_metadata();
        let (offset_index, offset_term) = self.cache.offset();
        let head = Head {
            counter: self.counter + 1,
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
            snapshot_index: snap.index,
            snapshot_term: snap.term,
            snapshot_digest: self.snapshot_digest,
            offset_index,
            offset_term,
            last_index: self.cache.last(),
            tail_digest: self.tail_digest(),
            prev_head: self.head_digest,
        };
        let sealed = self
            .hsm
            .seal(self.key, &self.cfg.ad(AD_HEAD, &[]), &head.encode())?;
        self.inner.set_wrapper_record(&sealed)?;
        Ok(digest(&sealed))
    }
}

impl<H: Hsm> Sealed<SledLog, H> {
    /// Opens [`SledLog`] in `path` and the sealed store over it.
    /// What the sled store's own structural checks reject is reported as
    /// [`StorageError::Tampered`] too: an honest sealed store never writes it.
    pub fn open_sled(
        path: impl AsRef<std::path::Path>,
        hsm: H,
        cfg: SealedConfig,
    ) -> Result<Self, StorageError> {
        let inner = SledLog::open(path).map_err(|e| match e {
            StorageError::Corrupt { what, detail } => StorageError::Tampered {
                replica: cfg.replica,
                record: SealedRecord::Container { what },
                detail,
            },
            other => other,
        })?;
        Self::open(inner, hsm, cfg)
    }
}

fn open_snapshot<H: Hsm>(
    hsm: &H,
    key: KeyHandle,
    cfg: &SealedConfig,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    if blob.len() < 17 || blob[0] != FORMAT_VERSION {
        return Err(HsmError::Malformed("bad snapshot header".into()));
    }
    hsm.unseal(key, &cfg.ad(AD_SNAPSHOT, &blob[..17]), &blob[17..])
}

fn decode_batch(plain: &[u8], h: &BatchHeader) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut rest = plain;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("truncated entry length".into());
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let body = rest
            .get(4..4 + len)
            .ok_or_else(|| "truncated entry".to_string())?;
        let e = Entry::parse_from_bytes(body).map_err(|e| format!("entry does not decode: {e}"))?;
        let expected = h.first + out.len() as u64;
        if e.index != expected {
            return Err(format!("holds index {} where {expected} belongs", e.index));
        }
        out.push(e);
        rest = &rest[4 + len..];
    }
    match out.last() {
        Some(l) if l.index == h.last && l.term == h.last_term => Ok(out),
        _ => Err("the sealed entries do not match the batch header".into()),
    }
}

fn raft_corrupt(e: raft::Error) -> StorageError {
    StorageError::Corrupt {
        what: "inner log store".into(),
        detail: e.to_string(),
    }
}

impl<L: AtomicSync, H: Hsm> Storage for Sealed<L, H> {
    crate::storage_reads_from!(cache);
}

impl<L: AtomicSync, H: Hsm> LogStore for Sealed<L, H> {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_usable()?;
        self.cache.check_append(entries)?;
        let Some(head) = entries.first() else {
            return Ok(());
        };
        self.cache.append(entries)?;
        self.pending_from = Some(self.pending_from.map_or(head.index, |p| p.min(head.index)));
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        // Only the sealed head carries the hard state: a clear copy in the inner
        // store would be one more unauthenticated record to distrust.
        self.check_usable()?;
        self.cache.set_hard_state(hard_state)?;
        self.dirty = true;
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check_usable()?;
        let meta = snapshot.get_metadata();
        if meta.index == u64::MAX {
            return Err(StorageError::SnapshotOutOfRange {
                index: meta.index,
                first_index: self.cache.first(),
                last_index: self.cache.last(),
            });
        }
        if meta.index < self.cache.offset().0 {
            return Err(StorageError::SnapshotOutOfDate {
                index: meta.index,
                compacted: self.cache.offset().0,
            });
        }
        self.guarded(|s| {
            let (sealed, d) = s.seal_snapshot(snapshot)?;
            s.cache.apply_snapshot(snapshot)?;
            s.pending_from = None;
            s.inner.apply_snapshot(&sealed)?;
            s.batches.clear();
            s.anchor = d;
            s.snapshot_digest = d;
            s.dirty = true;
            Ok(())
        })
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.check_usable()?;
        let index = snapshot.get_metadata().index;
        if index < self.cache.offset().0 || index > self.cache.last() {
            return Err(StorageError::SnapshotOutOfRange {
                index,
                first_index: self.cache.first(),
                last_index: self.cache.last(),
            });
        }
        if index < self.cache.latest_snapshot().get_metadata().index {
            return Ok(());
        }
        self.guarded(|s| {
            s.flush_entries()?;
            let (sealed, d) = s.seal_snapshot(snapshot)?;
            s.cache.save_snapshot(snapshot)?;
            s.inner.save_snapshot(&sealed)?;
            s.snapshot_digest = d;
            s.dirty = true;
            Ok(())
        })
    }

    fn compact(&mut self, compact_index: u64) -> Result<(), StorageError> {
        self.check_usable()?;
        self.cache.check_compact(compact_index)?;
        self.guarded(|s| {
            s.flush_entries()?;
            // Whole batches only: keep the batch that holds `compact_index`.
            let effective = match s.batches.range(..compact_index).next_back() {
                Some((&first, meta)) if meta.last >= compact_index => first,
                _ => compact_index,
            };
            if effective <= s.cache.first() {
                return Ok(());
            }
            s.cache.compact(effective)?;
            s.inner.compact(effective)?;
            let kept = s.batches.split_off(&effective);
            let dropped = std::mem::replace(&mut s.batches, kept);
            if let Some(m) = dropped.values().next_back() {
                if s.batches.is_empty() {
                    s.anchor = m.digest;
                }
            }
            s.dirty = true;
            Ok(())
        })
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.guarded(|s| {
            s.flush_entries()?;
            if !s.dirty {
                return s.inner.sync();
            }
            // Write order: sealed data and head durable, then the counter, then
            // return (and only then may the replica acknowledge).
            let head = s.write_head()?;
            s.inner.sync()?;
            let expected = s.counter + 1;
            let now = s.hsm.advance_counter(&s.cfg.counter_label, &head)?;
            if now != expected {
                return Err(StorageError::Hsm(HsmError::Device(format!(
                    "counter {:?} moved to {now}, expected {expected}: another store \
                     shares this counter label",
                    s.cfg.counter_label
                ))));
            }
            s.counter = now;
            s.head_digest = head;
            s.dirty = false;
            Ok(())
        })
    }

    fn latest_snapshot(&self) -> &Snapshot {
        self.cache.latest_snapshot()
    }

    fn hard_state(&self) -> &HardState {
        self.cache.hard_state()
    }

    fn set_wrapper_record(&mut self, _record: &[u8]) -> Result<(), StorageError> {
        Err(StorageError::Corrupt {
            what: "wrapper record".into(),
            detail: "a sealed store cannot itself be wrapped; wrap the inner store".into(),
        })
    }

    fn wrapper_record(&self) -> &[u8] {
        &[]
    }
}
