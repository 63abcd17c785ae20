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
//! whole, which the [`AtomicSync`] bound states, and on a place for its head beside
//! the log, which the [`WrapperRecord`] bound states ([`MemLog`] and `SledLog` offer
//! both).
//!
//! Every record is written and read with the engine's [`codec`](crate::codec), and
//! every associated data is built by [`labeled`]. Format 2 (this build) replaced the
//! protobuf encoding of sealed entries and snapshots and the plain concatenation of
//! associated data. A record whose clear version byte is not this format's is
//! [`StorageError::Tampered`]: the byte is not authenticated, so an old version
//! there can only be an edit inside a store whose container says it is current.

use std::collections::BTreeMap;
use std::sync::Arc;

use raft::prelude::{Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage};
use sha2::digest::typenum::Unsigned as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::codec::{entry_len, snapshot_len};
use super::{
    AtomicSync, Corruption, LogStore, MemLog, SealedRecord, SledLog, StorageError, StoredRecord,
    Tampering, WrapperRecord,
};
use crate::codec::{labeled, Codec, DecodeError, EncodeError, Prefix, Reader, Writer};
use crate::hsm::{Counter, Hsm, HsmError, KeyHandle, KeyKind};
use crate::runtime::telemetry::{self, Stopwatch};
use crate::snapshot::HsmSealer;
use crate::ReplicaId;

/// The format of every sealed record this build writes and reads.
const FORMAT_VERSION: u8 = 2;
const AD_BATCH: &[u8] = b"vaultfleet/sealed-log/batch/v2";
const AD_SNAPSHOT: &[u8] = b"vaultfleet/sealed-log/snapshot/v2";
const AD_HEAD: &[u8] = b"vaultfleet/sealed-log/head/v2";

const DIGEST_LEN: usize = 32;
type Digest = [u8; DIGEST_LEN];
const _: () = assert!(<Sha256 as sha2::digest::OutputSizeUser>::OutputSize::USIZE == DIGEST_LEN);

/// The most entries one sealed batch holds (its count is a `u32`).
const BATCH_ENTRIES_MAX: usize = Prefix::U32.max();

/// Clear batch header: version, first, last, last term, previous batch's digest.
const BATCH_HEADER_LEN: usize = 1 + 8 * 3 + DIGEST_LEN;
/// Clear snapshot header: version, index, term.
const SNAPSHOT_HEADER_LEN: usize = 1 + 8 * 2;
/// Head plaintext: nine integers and three digests.
const HEAD_LEN: usize = 8 * 9 + DIGEST_LEN * 3;
// The clear headers and the head are small, fixed-size records.
const _: () = assert!(BATCH_HEADER_LEN == 57 && SNAPSHOT_HEADER_LEN == 17 && HEAD_LEN == 168);

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
    /// Label of the MAC key the store's snapshot files' keys are derived from
    /// ([`HsmSealer`]).
    pub snapshot_key_label: String,
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
            snapshot_key_label: format!("vaultfleet/snapshot-seal/group-{group}/replica-{replica}"),
        }
    }

    /// The associated data of a record of kind `label` with clear `header`.
    fn ad(&self, label: &'static [u8], header: &[u8]) -> Vec<u8> {
        labeled(
            label,
            &[
                &self.group.to_be_bytes(),
                &self.replica.to_be_bytes(),
                header,
            ],
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct BatchMeta {
    last: u64,
    prev: Digest,
    digest: Digest,
}

/// The clear header in front of a sealed batch (also part of its associated data).
#[derive(Debug, PartialEq, Eq)]
struct BatchHeader {
    first: u64,
    last: u64,
    last_term: u64,
    prev: Digest,
}

impl Codec<'_> for BatchHeader {
    const WHAT: &'static str = "batch header";

    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(FORMAT_VERSION)
            .u64(self.first)
            .u64(self.last)
            .u64(self.last_term)
            .raw(&self.prev);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version(FORMAT_VERSION, "batch header")?;
        Ok(Self {
            first: r.u64("batch first index")?,
            last: r.u64("batch last index")?,
            last_term: r.u64("batch last term")?,
            prev: r.array("batch chain digest")?,
        })
    }
}

/// The clear header in front of a sealed snapshot (also part of its associated data).
struct SnapshotHeader {
    index: u64,
    term: u64,
}

impl Codec<'_> for SnapshotHeader {
    const WHAT: &'static str = "snapshot header";

    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(FORMAT_VERSION).u64(self.index).u64(self.term);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version(FORMAT_VERSION, "snapshot header")?;
        Ok(Self {
            index: r.u64("snapshot index")?,
            term: r.u64("snapshot term")?,
        })
    }
}

/// Splits a sealed record into its clear header `T`, the header's bytes (the
/// associated data binds them) and the sealed part.
fn split_sealed<'a, T: Codec<'a>>(blob: &'a [u8]) -> Result<(T, &'a [u8], &'a [u8]), DecodeError> {
    let mut r = Reader::new(blob);
    let header = T::read(&mut r)?;
    let (clear, sealed) = blob.split_at(blob.len() - r.left());
    Ok((header, clear, sealed))
}

/// A clear header in front of `sealed`.
fn join_sealed<'a, T: Codec<'a>>(header: &T, capacity: usize, sealed: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(capacity + sealed.len());
    // Fixed-width fields only: encoding a header cannot fail.
    let _ = header.encode(&mut w);
    debug_assert_eq!(w.len(), capacity);
    w.raw(sealed);
    w.into_vec()
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

impl Codec<'_> for Head {
    const WHAT: &'static str = "sealed head";

    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u64(self.counter)
            .u64(self.term)
            .u64(self.vote)
            .u64(self.commit)
            .u64(self.snapshot_index)
            .u64(self.snapshot_term)
            .u64(self.offset_index)
            .u64(self.offset_term)
            .u64(self.last_index)
            .raw(&self.snapshot_digest)
            .raw(&self.tail_digest)
            .raw(&self.prev_head);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            counter: r.u64("head counter")?,
            term: r.u64("head term")?,
            vote: r.u64("head vote")?,
            commit: r.u64("head commit")?,
            snapshot_index: r.u64("head snapshot index")?,
            snapshot_term: r.u64("head snapshot term")?,
            offset_index: r.u64("head offset index")?,
            offset_term: r.u64("head offset term")?,
            last_index: r.u64("head last index")?,
            snapshot_digest: r.array("head snapshot digest")?,
            tail_digest: r.array("head tail digest")?,
            prev_head: r.array("head previous head digest")?,
        })
    }
}

fn digest(blob: &[u8]) -> Digest {
    Sha256::digest(blob).into()
}

/// A sealed record that does not decode is tampering, whatever its version byte
/// says: that byte travels in clear, so an attacker with the disk could set it to
/// an old version to pass an edit off as an old format. The format of a whole
/// store is decided once, by its container (the sled store's marker), and a
/// record of another version inside a store of this format can only be an edit.
fn undecodable(replica: ReplicaId, record: SealedRecord, e: DecodeError) -> StorageError {
    StorageError::Tampered {
        replica,
        record,
        cause: Tampering::Decode(e),
    }
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
    /// The failure after which the store refuses writes.
    poisoned: Option<Arc<StorageError>>,
    /// True once [`Sealed::open_snapshot_files`] opened the inner store's
    /// files with this store's sealer: only then are they this store's (files
    /// the inner store opened plain are never used).
    files_sealed: bool,
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

/// The log as [`Opening::verify_log`] found it: every batch unsealed, chained and
/// matching the sealed head.
struct VerifiedLog {
    /// Index and term of the entry before the first.
    offset: (u64, u64),
    entries: Vec<Entry>,
    batches: BTreeMap<u64, BatchMeta>,
}

/// The checks [`Sealed::open`] runs on a store that holds a head, in order.
struct Opening<'a, H> {
    hsm: &'a H,
    key: KeyHandle,
    cfg: &'a SealedConfig,
}

impl<H: Hsm> Opening<'_, H> {
    fn tampered(&self, record: SealedRecord, cause: Tampering) -> StorageError {
        StorageError::Tampered {
            replica: self.cfg.replica,
            record,
            cause,
        }
    }

    /// A seal that does not open is tampering; an HSM that does not answer is not.
    fn unsealed(&self, record: SealedRecord, e: HsmError) -> StorageError {
        match e {
            HsmError::Unauthentic | HsmError::Malformed(_) => {
                self.tampered(record, Tampering::Unsealed(e))
            }
            other => StorageError::Hsm(other),
        }
    }

    fn undecodable(&self, record: SealedRecord, e: DecodeError) -> StorageError {
        undecodable(self.cfg.replica, record, e)
    }

    /// Step 1: unseal and decode the head.
    fn read_head(&self, record: &[u8]) -> Result<Head, StorageError> {
        let mut r = Reader::new(record);
        r.version(FORMAT_VERSION, "sealed head")
            .map_err(|e| self.undecodable(SealedRecord::Head, e))?;
        let plain = self
            .hsm
            .unseal(self.key, &self.cfg.ad(AD_HEAD, &[]), r.rest())
            .map_err(|e| self.unsealed(SealedRecord::Head, e))?;
        Head::from_bytes(&plain).map_err(|e| self.undecodable(SealedRecord::Head, e))
    }

    /// Step 2: the head against the HSM's counter. The counter names one head:
    /// equal counters must carry that head's digest, and a head one ahead must
    /// follow it. Anything else is an abandoned write that was replaced later (a
    /// forked image), or a rollback, or a counter that is behind.
    fn check_counter(
        &self,
        head: &Head,
        head_digest: &Digest,
        hsm: Counter,
    ) -> Result<(), StorageError> {
        let replica = self.cfg.replica;
        let h = hsm.value;
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
            *head_digest == hsm.binding
        } else {
            head.prev_head == hsm.binding
        };
        if !follows {
            return Err(StorageError::Forked {
                replica,
                write: head.counter,
            });
        }
        Ok(())
    }

    /// Step 3: the stored snapshot must be the one the head names, and unseal.
    fn verify_snapshot(
        &self,
        inner: &impl LogStore,
        head: &Head,
    ) -> Result<Snapshot, StorageError> {
        let stored = inner.latest_snapshot();
        let stored_meta = stored.get_metadata();
        if head.snapshot_digest == [0; DIGEST_LEN] {
            if stored_meta.index != 0 || !stored.data.is_empty() {
                return Err(self.tampered(
                    SealedRecord::Snapshot {
                        index: stored_meta.index,
                    },
                    Tampering::UnexpectedSnapshot,
                ));
            }
            return Ok(Snapshot::default());
        }
        let record = SealedRecord::Snapshot {
            index: head.snapshot_index,
        };
        if digest(&stored.data) != head.snapshot_digest {
            return Err(self.tampered(
                record,
                Tampering::SnapshotReplaced {
                    stored_index: stored_meta.index,
                },
            ));
        }
        let (header, clear, sealed) = split_sealed::<SnapshotHeader>(&stored.data)
            .map_err(|e| self.undecodable(record.clone(), e))?;
        let plain = self
            .hsm
            .unseal(self.key, &self.cfg.ad(AD_SNAPSHOT, clear), sealed)
            .map_err(|e| self.unsealed(record.clone(), e))?;
        let snapshot =
            Snapshot::from_bytes(&plain).map_err(|e| self.undecodable(record.clone(), e))?;
        if snapshot.get_metadata() != stored_meta
            || stored_meta.index != head.snapshot_index
            || stored_meta.term != head.snapshot_term
            || header.index != head.snapshot_index
            || header.term != head.snapshot_term
        {
            return Err(self.tampered(record, Tampering::MetadataMismatch));
        }
        Ok(snapshot)
    }

    /// Step 4a: the log's offset and end must be the head's. Returns the first
    /// and last index and the offset's term.
    fn log_bounds(
        &self,
        inner: &impl LogStore,
        head: &Head,
    ) -> Result<(u64, u64, u64), StorageError> {
        let read = |e: raft::Error| {
            StorageError::corrupt(StoredRecord::Log, Corruption::Read(Arc::new(e)))
        };
        let first = inner.first_index().map_err(read)?;
        let last = inner.last_index().map_err(read)?;
        let offset_index = first.saturating_sub(1);
        let offset_term = inner.term(offset_index).map_err(read)?;
        if offset_index != head.offset_index || offset_term != head.offset_term {
            return Err(self.tampered(
                SealedRecord::Entry { index: first },
                Tampering::FrontMoved {
                    found_index: offset_index,
                    found_term: offset_term,
                    sealed_index: head.offset_index,
                    sealed_term: head.offset_term,
                },
            ));
        }
        if last != head.last_index {
            return Err(self.tampered(
                SealedRecord::Entry {
                    index: last.min(head.last_index) + 1,
                },
                Tampering::EndMoved {
                    found: last,
                    sealed: head.last_index,
                },
            ));
        }
        Ok((first, last, offset_term))
    }

    /// Step 4: every batch of the log, in order, unsealed and chained, ending at
    /// the batch the head names.
    fn verify_log(&self, inner: &impl LogStore, head: &Head) -> Result<VerifiedLog, StorageError> {
        let (first, last, offset_term) = self.log_bounds(inner, head)?;
        let stored = if last >= first {
            inner
                .entries(first, last + 1, None, GetEntriesContext::empty(false))
                .map_err(|e| {
                    StorageError::corrupt(StoredRecord::Log, Corruption::Read(Arc::new(e)))
                })?
        } else {
            Vec::new()
        };
        let mut log = VerifiedLog {
            offset: (first - 1, offset_term),
            entries: Vec::with_capacity(stored.len()),
            batches: BTreeMap::new(),
        };
        let mut chain: Option<Digest> = None;
        while log.entries.len() < stored.len() {
            let (header, meta, entries) =
                self.verify_batch(&stored[log.entries.len()..], last, chain)?;
            chain = Some(meta.digest);
            log.batches.insert(header.first, meta);
            log.entries.extend(entries);
        }
        if let Some(tail) = chain.filter(|tail| *tail != head.tail_digest) {
            debug_assert_ne!(tail, head.tail_digest);
            let (first, meta) = log
                .batches
                .iter()
                .next_back()
                .map(|(f, m)| (*f, *m))
                .unzip();
            return Err(self.tampered(
                SealedRecord::Batch {
                    first: first.unwrap_or(0),
                    last: meta.map_or(0, |m| m.last),
                },
                Tampering::TailReplaced,
            ));
        }
        Ok(log)
    }

    /// Step 4b: the batch stored in `stored[0]` (whose placeholders follow it):
    /// where it sits, its chain link, its seal, and its entries against the
    /// placeholders. `last` is the log's last index, `chain` the digest of the
    /// batch before it.
    fn verify_batch(
        &self,
        stored: &[Entry],
        last: u64,
        chain: Option<Digest>,
    ) -> Result<(BatchHeader, BatchMeta, Vec<Entry>), StorageError> {
        let e = &stored[0];
        if e.data.is_empty() {
            return Err(self.tampered(SealedRecord::Entry { index: e.index }, Tampering::Uncovered));
        }
        let (h, clear, sealed) = split_sealed::<BatchHeader>(&e.data)
            .map_err(|err| self.undecodable(SealedRecord::Entry { index: e.index }, err))?;
        let record = SealedRecord::Batch {
            first: h.first,
            last: h.last,
        };
        if h.first != e.index || h.last < h.first {
            return Err(self.tampered(record, Tampering::Moved { at: e.index }));
        }
        if h.last > last {
            return Err(self.tampered(
                record,
                Tampering::CutShort {
                    from: last + 1,
                    to: h.last,
                },
            ));
        }
        if chain.is_some_and(|c| c != h.prev) {
            return Err(self.tampered(record, Tampering::BrokenChain));
        }
        let plain = self
            .hsm
            .unseal(self.key, &self.cfg.ad(AD_BATCH, clear), sealed)
            .map_err(|err| self.unsealed(record.clone(), err))?;
        let entries = decode_batch(&plain, &h).map_err(|cause| match cause {
            Tampering::Decode(e) => self.undecodable(record.clone(), e),
            cause => self.tampered(record.clone(), cause),
        })?;
        for (j, d) in entries.iter().enumerate() {
            let Some(s) = stored.get(j) else {
                return Err(self.tampered(
                    record,
                    Tampering::CutShort {
                        from: d.index,
                        to: h.last,
                    },
                ));
            };
            if s.index != d.index || s.term != d.term || (j > 0 && !s.data.is_empty()) {
                return Err(self.tampered(
                    SealedRecord::Entry { index: d.index },
                    Tampering::PlaceholderEdited,
                ));
            }
        }
        let meta = BatchMeta {
            last: h.last,
            prev: h.prev,
            digest: digest(&e.data),
        };
        Ok((h, meta, entries))
    }

    /// Step 5: the decrypted view, from the head's hard state and what was verified.
    fn rebuild_cache(
        &self,
        head: &Head,
        snapshot: Snapshot,
        log: VerifiedLog,
    ) -> Result<MemLog, StorageError> {
        let mut hard_state = HardState::default();
        hard_state.term = head.term;
        hard_state.vote = head.vote;
        hard_state.commit = head.commit;
        MemLog::from_parts(hard_state, snapshot, log.offset, log.entries).map_err(|e| match e {
            StorageError::Corrupt { cause, .. } => {
                self.tampered(SealedRecord::HardState, Tampering::Container(cause))
            }
            other => other,
        })
    }

    /// Step 6: a head one write ahead of the counter is a crash after the data
    /// became durable and before the counter advanced: finish it.
    fn complete_counter_advance(
        &self,
        head: &Head,
        head_digest: &Digest,
        hsm_counter: u64,
    ) -> Result<(), StorageError> {
        if Some(head.counter) != hsm_counter.checked_add(1) {
            debug_assert_eq!(head.counter, hsm_counter);
            return Ok(());
        }
        let now = self
            .hsm
            .advance_counter(&self.cfg.counter_label, head_digest)?;
        if now != head.counter {
            return Err(StorageError::CounterBehind {
                replica: self.cfg.replica,
                disk: head.counter,
                hsm: now,
            });
        }
        tracing::info!(
            replica = self.cfg.replica,
            counter = now,
            "completed the counter advance of a write interrupted by a crash"
        );
        Ok(())
    }
}

impl<L: AtomicSync + WrapperRecord, H: Hsm> Sealed<L, H> {
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
    /// [`StorageError::CounterBehind`] a counter that is behind the disk,
    /// [`StorageError::Hsm`] an HSM that does not answer or lacks the key.
    pub fn open(inner: L, hsm: H, cfg: SealedConfig) -> Result<Self, StorageError> {
        let hsm_counter = hsm.counter(&cfg.counter_label)?;
        if inner.wrapper_record().is_empty() {
            return Self::open_new(inner, hsm, cfg, hsm_counter.value);
        }
        let key = hsm
            .find_key(&cfg.key_label, KeyKind::Aead)?
            .ok_or_else(|| HsmError::NoSuchKey {
                label: cfg.key_label.clone(),
                kind: KeyKind::Aead,
            })?;
        let opening = Opening {
            hsm: &hsm,
            key,
            cfg: &cfg,
        };
        let head_digest = digest(inner.wrapper_record());
        let head = opening.read_head(inner.wrapper_record())?;
        opening.check_counter(&head, &head_digest, hsm_counter)?;
        let snapshot = opening.verify_snapshot(&inner, &head)?;
        let mut log = opening.verify_log(&inner, &head)?;
        let batches = std::mem::take(&mut log.batches);
        let cache = opening.rebuild_cache(&head, snapshot, log)?;
        opening.complete_counter_advance(&head, &head_digest, hsm_counter.value)?;
        let store = Self {
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
            files_sealed: false,
        };
        store.assert_invariants();
        Ok(store)
    }

    /// Starts a new sealed store over an inner store that holds no head: it must
    /// hold nothing else either, and the HSM's counter must never have moved.
    fn open_new(
        inner: L,
        hsm: H,
        cfg: SealedConfig,
        hsm_counter: u64,
    ) -> Result<Self, StorageError> {
        let untouched = inner.last_index().unwrap_or(1) == 0
            && inner.latest_snapshot().get_metadata().index == 0
            && *inner.hard_state() == HardState::default();
        if !untouched {
            return Err(StorageError::Tampered {
                replica: cfg.replica,
                record: SealedRecord::Head,
                cause: Tampering::NoHead,
            });
        }
        if hsm_counter > 0 {
            return Err(StorageError::RolledBack {
                replica: cfg.replica,
                disk: 0,
                hsm: hsm_counter,
            });
        }
        let key = hsm.key(&cfg.key_label, KeyKind::Aead)?;
        Ok(Self {
            inner,
            hsm,
            cfg,
            key,
            cache: MemLog::new(),
            batches: BTreeMap::new(),
            anchor: [0; DIGEST_LEN],
            snapshot_digest: [0; DIGEST_LEN],
            counter: 0,
            head_digest: [0; DIGEST_LEN],
            pending_from: None,
            dirty: false,
            poisoned: None,
            files_sealed: false,
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

    /// The store's invariants, checked in debug builds (the simulator runs with
    /// them): the batches cover the decrypted log exactly and form one chain, and
    /// the durable head is the one the counter is bound to.
    fn assert_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        // Head/counter pair: a store that was ever written holds the head whose
        // digest its counter's binding names (until the next write stages another).
        debug_assert_eq!(self.counter == 0, self.head_digest == [0; DIGEST_LEN]);
        if !self.dirty && self.counter > 0 {
            debug_assert_eq!(digest(self.inner.wrapper_record()), self.head_digest);
        }
        if self.pending_from.is_some() {
            return;
        }
        // Batches: consecutive, chained, and ending at the store's last index.
        let mut expected_first = self.cache.first();
        let mut prev = None;
        for (&first, meta) in &self.batches {
            debug_assert_eq!(first, expected_first, "batches are consecutive");
            debug_assert!(meta.last >= first);
            if let Some(p) = prev {
                debug_assert_eq!(meta.prev, p, "batches are chained");
            }
            prev = Some(meta.digest);
            expected_first = meta.last + 1;
        }
        debug_assert_eq!(
            expected_first,
            self.cache.last() + 1,
            "the batches cover the store's last index"
        );
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(cause) => Err(StorageError::Poisoned {
                replica: self.cfg.replica,
                cause: Arc::clone(cause),
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
            self.poisoned = Some(Arc::new(e.clone()));
        }
        result
    }

    fn tail_digest(&self) -> Digest {
        self.batches
            .values()
            .next_back()
            .map_or(self.anchor, |m| m.digest)
    }

    /// The plaintext of a batch of entries `start..=last` of the cache: a `u32`
    /// count, then each entry. Sized up front, so no reallocation leaves a copy
    /// of the plaintext behind.
    fn batch_plaintext(&self, start: u64, last: u64) -> Result<Zeroizing<Vec<u8>>, StorageError> {
        let entry = |index: u64| {
            self.cache.entry(index).ok_or(StorageError::Corrupt {
                record: StoredRecord::Entry { index },
                cause: Corruption::Missing,
            })
        };
        let mut size = 4;
        for index in start..=last {
            size += entry_len(entry(index)?);
        }
        // Held in `Zeroizing`: a failed entry still wipes the plaintext written so far.
        let mut w = Zeroizing::new(Writer::with_capacity(size));
        let count = (last - start + 1) as usize;
        w.count(BATCH_ENTRIES_MAX, count, "batch entry count")
            .map_err(|source| StorageError::Encode {
                record: StoredRecord::Entry { index: start },
                source,
            })?;
        for index in start..=last {
            entry(index)?
                .encode(&mut w)
                .map_err(|source| StorageError::Encode {
                    record: StoredRecord::Entry { index },
                    source,
                })?;
        }
        debug_assert_eq!(w.len(), size, "the batch plaintext was sized exactly");
        Ok(Zeroizing::new(w.take_vec()))
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
        let plain = self.batch_plaintext(start, last)?;
        let placeholders: Vec<Entry> = (start..=last)
            .filter_map(|index| self.cache.entry(index))
            .map(|e| {
                let mut p = Entry::default();
                p.index = e.index;
                p.term = e.term;
                p
            })
            .collect();
        debug_assert_eq!(placeholders.len() as u64, last - start + 1);
        let header = BatchHeader {
            first: start,
            last,
            last_term: placeholders.last().map_or(0, |e| e.term),
            prev,
        };
        let mut clear = Writer::with_capacity(BATCH_HEADER_LEN);
        // Fixed-width fields only: encoding a header cannot fail.
        let _ = header.encode(&mut clear);
        let seal = Stopwatch::start();
        let sealed = self
            .hsm
            .seal(self.key, &self.cfg.ad(AD_BATCH, clear.as_slice()), &plain)?;
        seal.record_labelled(telemetry::SEAL_SECONDS, "record", "batch");
        let blob = join_sealed(&header, BATCH_HEADER_LEN, &sealed);
        let d = digest(&blob);
        let mut placeholders = placeholders;
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
        self.assert_invariants();
        Ok(())
    }

    fn seal_snapshot(&self, snapshot: &Snapshot) -> Result<(Snapshot, Digest), StorageError> {
        let meta = snapshot.get_metadata();
        let header = SnapshotHeader {
            index: meta.index,
            term: meta.term,
        };
        let mut clear = Writer::with_capacity(SNAPSHOT_HEADER_LEN);
        // Fixed-width fields only: encoding a header cannot fail.
        let _ = header.encode(&mut clear);
        let size = snapshot_len(snapshot);
        // Held in `Zeroizing`: a failed encode still wipes what was written.
        let mut w = Zeroizing::new(Writer::with_capacity(size));
        snapshot
            .encode(&mut w)
            .map_err(|source| StorageError::Encode {
                record: StoredRecord::Snapshot,
                source,
            })?;
        debug_assert_eq!(w.len(), size, "the snapshot plaintext was sized exactly");
        let plain = Zeroizing::new(w.take_vec());
        let seal = Stopwatch::start();
        let sealed = self.hsm.seal(
            self.key,
            &self.cfg.ad(AD_SNAPSHOT, clear.as_slice()),
            &plain,
        )?;
        seal.record_labelled(telemetry::SEAL_SECONDS, "record", "snapshot");
        let blob = join_sealed(&header, SNAPSHOT_HEADER_LEN, &sealed);
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
        let mut plain = Writer::with_capacity(HEAD_LEN);
        // Fixed-width fields only: encoding the head cannot fail.
        let _ = head.encode(&mut plain);
        debug_assert_eq!(plain.len(), HEAD_LEN);
        let sealed = self
            .hsm
            .seal(self.key, &self.cfg.ad(AD_HEAD, &[]), plain.as_slice())?;
        let mut record = Writer::with_capacity(1 + sealed.len());
        record.u8(FORMAT_VERSION).raw(&sealed);
        let record = record.into_vec();
        self.inner.set_wrapper_record(&record)?;
        Ok(digest(&record))
    }
}

impl<L, H: Hsm + Clone> Sealed<L, H> {
    /// The sealer of this store's snapshot files: this store's HSM (a clone;
    /// share a device through an `Arc`) and its config's
    /// [`snapshot_key_label`](SealedConfig::snapshot_key_label).
    pub fn snapshot_sealer(&self) -> HsmSealer<H> {
        HsmSealer::new(self.hsm.clone(), self.cfg.snapshot_key_label.clone())
    }
}

impl<L: super::SnapshotFilesHost, H: Hsm + Clone> Sealed<L, H> {
    /// Opens the inner store's snapshot files sealed by
    /// [`Sealed::snapshot_sealer`]: this store's snapshots are then streamed,
    /// and what their files hold is as sealed as the log.
    pub fn open_snapshot_files(&mut self) -> Result<(), StorageError> {
        if self.inner.snapshot_files().is_some() {
            // Opened by someone else, perhaps plain: refuse rather than write
            // snapshots unsealed beside a sealed log.
            return Err(StorageError::SnapshotFilesOpenedPlain {
                replica: self.cfg.replica,
            });
        }
        let sealer = std::sync::Arc::new(self.snapshot_sealer());
        let replica = self.cfg.replica;
        self.inner.open_snapshot_files(replica, Some(sealer))?;
        self.files_sealed = true;
        Ok(())
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
        // The sled marker is not authenticated: an `OldFormat` or `ForeignFormat`
        // from it is passed on as such (an honest upgrade meets it), and the
        // message says that an edited marker looks the same.
        let inner = SledLog::open(path).map_err(|e| match e {
            StorageError::Corrupt { record, cause } => StorageError::Tampered {
                replica: cfg.replica,
                record: SealedRecord::Container { record },
                cause: Tampering::Container(cause),
            },
            other => other,
        })?;
        Self::open(inner, hsm, cfg)
    }
}

/// The entries a batch's plaintext holds, checked against its header.
fn decode_batch(plain: &[u8], h: &BatchHeader) -> Result<Vec<Entry>, Tampering> {
    let mut r = Reader::new(plain);
    let n = r
        .count(BATCH_ENTRIES_MAX, "batch entry count")
        .map_err(Tampering::Decode)?;
    if Some(n as u64) != (h.last - h.first).checked_add(1) {
        return Err(Tampering::HeaderMismatch);
    }
    let mut out = Vec::with_capacity(n.min(r.left()));
    for i in 0..n as u64 {
        let e = Entry::read(&mut r).map_err(Tampering::Decode)?;
        let expected = h.first + i;
        if e.index != expected {
            return Err(Tampering::WrongIndex {
                found: e.index,
                expected,
            });
        }
        out.push(e);
    }
    r.expect_empty("sealed batch").map_err(Tampering::Decode)?;
    match out.last() {
        Some(l) if l.index == h.last && l.term == h.last_term => Ok(out),
        _ => Err(Tampering::HeaderMismatch),
    }
}

impl<L: AtomicSync + WrapperRecord, H: Hsm> Storage for Sealed<L, H> {
    crate::storage_reads_from!(cache);
}

impl<L: AtomicSync + WrapperRecord, H: Hsm> LogStore for Sealed<L, H> {
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
            s.assert_invariants();
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
            s.assert_invariants();
            Ok(())
        })
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.guarded(|s| {
            let persist = Stopwatch::start();
            s.flush_entries()?;
            if !s.dirty {
                return s.inner.sync();
            }
            // Write order: sealed data and head durable, then the counter, then
            // return (and only then may the replica acknowledge).
            let head = s.write_head()?;
            s.inner.sync()?;
            let expected = s.counter + 1;
            let advance = Stopwatch::start();
            let now = s.hsm.advance_counter(&s.cfg.counter_label, &head)?;
            advance.record(telemetry::COUNTER_ADVANCE_SECONDS);
            if now != expected {
                return Err(StorageError::CounterShared {
                    replica: s.cfg.replica,
                    label: s.cfg.counter_label.clone(),
                    now,
                    expected,
                });
            }
            s.counter = now;
            s.head_digest = head;
            s.dirty = false;
            s.assert_invariants();
            persist.record(telemetry::LOG_PERSIST_SECONDS);
            Ok(())
        })
    }

    fn latest_snapshot(&self) -> &Snapshot {
        self.cache.latest_snapshot()
    }

    fn hard_state(&self) -> &HardState {
        self.cache.hard_state()
    }

    fn snapshot_files(&self) -> Option<Arc<dyn crate::snapshot::SnapshotFiles>> {
        if !self.files_sealed {
            return None;
        }
        self.inner.snapshot_files()
    }
}
