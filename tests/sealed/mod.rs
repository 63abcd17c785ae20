//! The sealed-store suite, generic over the HSM: every test takes an HSM and a
//! group id of its own (so tests sharing one PKCS#11 token use distinct key and
//! counter labels) and works on `Sealed<SledLog, H>` in a temporary directory,
//! editing the sled database underneath it the way a hostile host would.
#![allow(dead_code)]

use std::path::Path;

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::GetEntriesContext;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vaultfleet::codec::DecodeError;
use vaultfleet::hsm::{Counter, Hsm, HsmError, KeyHandle, KeyKind};
use vaultfleet::storage::{codec, SealedRecord, StoredRecord, Tampering};
use vaultfleet::{LogStore, MemLog, Sealed, SealedConfig, SledLog, StorageError};
use zeroize::Zeroizing;

pub type Store<H> = Sealed<SledLog, H>;

type Edit = Box<dyn Fn(&sled::Tree)>;

pub fn entry(index: u64, term: u64, data: &str) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.as_bytes().to_vec().into();
    e
}

pub fn open<H: Hsm + Clone>(
    dir: &Path,
    hsm: &H,
    group: u64,
    replica: u64,
) -> Result<Store<H>, StorageError> {
    Sealed::open_sled(dir, hsm.clone(), SealedConfig::new(group, replica))
}

/// A sealed store keeps whole batches when compacting, so it may hold entries
/// before the model's first index; everything else must match exactly.
#[track_caller]
pub fn assert_matches_model(actual: &View, model: &View, what: &str) {
    assert_eq!(actual.hard_state, model.hard_state, "{what}: hard state");
    assert_eq!(actual.snapshot, model.snapshot, "{what}: snapshot");
    assert!(
        actual.first <= model.first,
        "{what}: compacted past the model"
    );
    let skip = (model.first - actual.first) as usize;
    assert_eq!(
        &actual.entries[skip.min(actual.entries.len())..],
        &model.entries[..],
        "{what}: entries"
    );
    if skip == 0 {
        assert_eq!(actual.offset_term, model.offset_term, "{what}: offset term");
    }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    let mut hs = HardState::default();
    hs.term = term;
    hs.vote = vote;
    hs.commit = commit;
    hs
}

fn snapshot(index: u64, term: u64, data: &str) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata()
        .set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
    s.data = data.as_bytes().to_vec().into();
    s
}

/// One Ready cycle's writes, followed by `sync`.
#[derive(Clone)]
pub enum Op {
    Append(Vec<Entry>),
    HardState(HardState),
    ApplySnapshot(Snapshot),
    SaveSnapshot(Snapshot),
    Compact(u64),
}

fn batch(first: u64, n: u64, term: u64, tag: &str) -> Vec<Entry> {
    (first..first + n)
        .map(|i| entry(i, term, &format!("{tag}-{i}-secret-payload")))
        .collect()
}

/// A history touching every kind of write: multi-entry batches, a conflicting
/// append inside a batch, a local snapshot with compaction through the middle of
/// a batch, a leader's snapshot replacing the log, and appends after it.
pub fn history() -> Vec<Vec<Op>> {
    vec![
        vec![
            Op::ApplySnapshot(snapshot(1, 1, "bootstrap")),
            Op::HardState(hard_state(1, 0, 1)),
        ],
        vec![
            Op::Append(batch(2, 3, 1, "a")),
            Op::HardState(hard_state(1, 1, 1)),
        ],
        vec![
            Op::Append(batch(5, 4, 1, "b")),
            Op::HardState(hard_state(1, 1, 4)),
        ],
        vec![Op::Append(batch(9, 1, 1, "c"))],
        // A new leader's entries replace 7..=9 (inside batch 5..=8 and all of 9).
        vec![
            Op::Append(batch(7, 3, 2, "d")),
            Op::HardState(hard_state(2, 2, 6)),
        ],
        vec![
            Op::Append(batch(10, 2, 2, "e")),
            Op::HardState(hard_state(2, 2, 10)),
        ],
        // Snapshot at 6 and compaction through the middle of batch 5..=9.
        vec![
            Op::SaveSnapshot(snapshot(6, 1, "state-at-6")),
            Op::Compact(7),
        ],
        vec![
            Op::Append(batch(12, 5, 2, "f")),
            Op::HardState(hard_state(2, 2, 14)),
        ],
        vec![
            Op::SaveSnapshot(snapshot(14, 2, "state-at-14")),
            Op::Compact(15),
            Op::HardState(hard_state(2, 2, 16)),
        ],
        // The leader sends a snapshot far ahead: the whole log is replaced.
        vec![
            Op::ApplySnapshot(snapshot(40, 3, "state-at-40")),
            Op::HardState(hard_state(3, 0, 40)),
        ],
        vec![
            Op::Append(batch(41, 2, 3, "g")),
            Op::HardState(hard_state(3, 3, 42)),
        ],
        vec![Op::Append(batch(43, 1, 3, "h"))],
    ]
}

pub fn apply_ops<S: LogStore>(store: &mut S, ops: &[Op]) -> Result<(), StorageError> {
    for op in ops {
        match op {
            Op::Append(e) => store.append(e)?,
            Op::HardState(h) => store.set_hard_state(h)?,
            Op::ApplySnapshot(s) => store.apply_snapshot(s)?,
            Op::SaveSnapshot(s) => store.save_snapshot(s)?,
            Op::Compact(i) => store.compact(*i)?,
        }
    }
    Ok(())
}

/// What a reader can see of a store, for comparison with the model.
#[derive(Debug, PartialEq)]
pub struct View {
    hard_state: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
    first: u64,
    offset_term: u64,
}

pub fn view<S: LogStore>(s: &S) -> View {
    let first = s.first_index().unwrap();
    let last = s.last_index().unwrap();
    View {
        hard_state: s.hard_state().clone(),
        snapshot: s.latest_snapshot().clone(),
        entries: if last >= first {
            s.entries(first, last + 1, None, GetEntriesContext::empty(false))
                .unwrap()
        } else {
            vec![]
        },
        first,
        offset_term: s.term(first - 1).unwrap(),
    }
}

/// The model: the same history on a `MemLog`, one view after each cycle.
pub fn model_views() -> Vec<View> {
    let mut m = MemLog::new();
    let mut out = vec![view(&m)];
    for ops in history() {
        apply_ops(&mut m, &ops).unwrap();
        out.push(view(&m));
    }
    out
}

pub fn write_history<H: Hsm + Clone>(dir: &Path, hsm: &H, group: u64, replica: u64, cycles: usize) {
    let mut s = open(dir, hsm, group, replica).unwrap();
    for ops in history().iter().take(cycles) {
        apply_ops(&mut s, ops).unwrap();
        s.sync().unwrap();
    }
}

/// Opens a closed store's sled database directly. sled's background threads can
/// hold the directory's lock for a moment after the store is dropped, so this
/// retries the lock, as `SledLog::open` does.
#[allow(clippy::disallowed_methods)] // waits out sled's lock in wall-clock time
pub fn raw_db(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(dir) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
}

/// Edits the sled database under a closed store.
pub fn with_raw_tree(dir: &Path, edit: impl FnOnce(&sled::Tree)) {
    let db = raw_db(dir);
    let tree = db.open_tree("raft").unwrap();
    edit(&tree);
    db.flush().unwrap();
}

pub fn entry_key(index: u64) -> Vec<u8> {
    let mut k = vec![b'e'];
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn expect_tampered<H: Hsm>(
    r: Result<Store<H>, StorageError>,
    replica: u64,
) -> (SealedRecord, Tampering) {
    match r {
        Err(StorageError::Tampered {
            replica: r,
            record,
            cause,
        }) => {
            assert_eq!(r, replica, "the error names the replica");
            (record, cause)
        }
        Err(other) => panic!("expected a tampering error, got: {other}"),
        Ok(_) => panic!("tampered store was opened"),
    }
}

// --- the scenarios ---------------------------------------------------------

/// Every cycle of the history survives a reopen, and the disk holds no plain text.
pub fn round_trip<H: Hsm + Clone>(hsm: H, group: u64) {
    let dir = tempfile::tempdir().unwrap();
    let views = model_views();
    let mut s = open(dir.path(), &hsm, group, 1).unwrap();
    for (i, ops) in history().iter().enumerate() {
        apply_ops(&mut s, ops).unwrap();
        s.sync().unwrap();
        let live = view(&s);
        assert_matches_model(&live, &views[i + 1], &format!("live view after cycle {i}"));
        let counter = s.counter();
        drop(s);
        s = open(dir.path(), &hsm, group, 1).unwrap();
        assert_eq!(view(&s), live, "reopened view after cycle {i}");
        assert_eq!(s.counter(), counter);
        assert_eq!(
            hsm.counter(&SealedConfig::new(group, 1).counter_label)
                .unwrap()
                .value,
            counter
        );
    }
    drop(s);
    let mut found = Vec::new();
    scan_for(dir.path(), b"secret-payload", &mut found);
    scan_for(dir.path(), b"state-at-40", &mut found);
    assert!(found.is_empty(), "plain text on disk in {found:?}");
}

fn scan_for(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            scan_for(&e.path(), needle, found);
        } else {
            let bytes = std::fs::read(e.path()).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(e.path().display().to_string());
            }
        }
    }
}

/// A flipped byte in an entry batch, the snapshot, the head, or a clear term.
pub fn flipped_bytes_are_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "batch payload",
            Box::new(|t: &sled::Tree| {
                let key = entry_key(12);
                let mut v = t.get(&key).unwrap().unwrap().to_vec();
                let n = v.len();
                v[n - 20] ^= 0x01;
                t.insert(key, v).unwrap();
            }),
        ),
        (
            "snapshot",
            Box::new(|t: &sled::Tree| {
                // Field 1 (data, the sealed blob) comes first; flip inside it.
                let mut v = t.get(b"m/snapshot").unwrap().unwrap().to_vec();
                v[40] ^= 0x80;
                t.insert(b"m/snapshot", v).unwrap();
            }),
        ),
        (
            "head",
            Box::new(|t: &sled::Tree| {
                let mut v = t.get(b"m/wrapper").unwrap().unwrap().to_vec();
                v[30] ^= 0x04;
                t.insert(b"m/wrapper", v).unwrap();
            }),
        ),
    ];
    for (i, (what, edit)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let group = group * 100 + i as u64;
        write_history(dir.path(), &hsm, group, 1, 8);
        with_raw_tree(dir.path(), edit);
        let (record, detail) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
        match what {
            "batch payload" => assert_eq!(
                record,
                SealedRecord::Batch {
                    first: 12,
                    last: 16
                },
                "{detail}"
            ),
            "snapshot" => assert_eq!(record, SealedRecord::Snapshot { index: 6 }, "{detail}"),
            _ => assert_eq!(record, SealedRecord::Head, "{detail}"),
        }
    }
}

/// Two batches swapped; a placeholder's term edited.
pub fn swapped_and_edited_entries_are_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let dir = tempfile::tempdir().unwrap();
    write_history(dir.path(), &hsm, group, 1, 6);
    // Batches now: 2..=4, 5..=6 + 7..=9 (re-sealed as 5..=9), 10..=11.
    with_raw_tree(dir.path(), |t| {
        let a = t.get(entry_key(2)).unwrap().unwrap();
        let b = t.get(entry_key(10)).unwrap().unwrap();
        t.insert(entry_key(2), b).unwrap();
        t.insert(entry_key(10), a).unwrap();
    });
    let (record, detail) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
    assert_eq!(
        record,
        SealedRecord::Container {
            record: StoredRecord::Entry { index: 2 }
        },
        "{detail}"
    );

    // A subtler swap keeps each record's clear index and term and swaps only the
    // sealed payloads of two batches.
    let dir = tempfile::tempdir().unwrap();
    write_history(dir.path(), &hsm, group + 2, 1, 6);
    with_raw_tree(dir.path(), |t| {
        let mut a: Entry =
            codec::decode_record::<Entry>(&t.get(entry_key(2)).unwrap().unwrap()).unwrap();
        let mut b: Entry =
            codec::decode_record::<Entry>(&t.get(entry_key(10)).unwrap().unwrap()).unwrap();
        std::mem::swap(&mut a.data, &mut b.data);
        t.insert(entry_key(2), codec::encode_record(&a).unwrap())
            .unwrap();
        t.insert(entry_key(10), codec::encode_record(&b).unwrap())
            .unwrap();
    });
    let (record, detail) = expect_tampered(open(dir.path(), &hsm, group + 2, 1), 1);
    assert_eq!(
        record,
        SealedRecord::Batch {
            first: 10,
            last: 11
        },
        "{detail}"
    );

    let dir = tempfile::tempdir().unwrap();
    write_history(dir.path(), &hsm, group + 1, 1, 6);
    with_raw_tree(dir.path(), |t| {
        // Placeholder entry 3: raise its term in the clear.
        let raw = t.get(entry_key(3)).unwrap().unwrap();
        let mut e: Entry = codec::decode_record::<Entry>(&raw).unwrap();
        e.term += 1;
        t.insert(entry_key(3), codec::encode_record(&e).unwrap())
            .unwrap();
    });
    let (record, detail) = expect_tampered(open(dir.path(), &hsm, group + 1, 1), 1);
    assert_eq!(record, SealedRecord::Entry { index: 3 }, "{detail}");
}

/// A sealed record whose clear version byte was set to an older format (1:
/// protobuf entries, associated data without length prefixes) inside a store whose
/// container says it is current is tampering: the byte is not authenticated, and an
/// attacker must not be able to pass an edit off as an old format.
pub fn old_version_byte_in_a_current_store_is_tampering<H: Hsm + Clone>(hsm: H, group: u64) {
    for (g, record) in [(group, "batch"), (group + 1, "head")] {
        let dir = tempfile::tempdir().unwrap();
        write_history(dir.path(), &hsm, g, 1, 6);
        with_raw_tree(dir.path(), |t| match record {
            "batch" => {
                let mut e =
                    codec::decode_record::<Entry>(&t.get(entry_key(2)).unwrap().unwrap()).unwrap();
                let mut data = e.data.to_vec();
                data[0] = 1;
                e.data = data.into();
                t.insert(entry_key(2), codec::encode_record(&e).unwrap())
                    .unwrap();
            }
            _ => {
                let mut head = t.get(b"m/wrapper").unwrap().unwrap().to_vec();
                head[0] = 1;
                t.insert(b"m/wrapper", head).unwrap();
            }
        });
        match open(dir.path(), &hsm, g, 1) {
            Err(StorageError::Tampered {
                cause:
                    Tampering::Decode(DecodeError::Version {
                        found: 1,
                        expected: 2,
                        ..
                    }),
                ..
            }) => {}
            Err(other) => panic!("{record}: expected tampering (version byte), got: {other}"),
            Ok(_) => panic!("{record}: a store with an edited version byte was opened"),
        }
    }
}

/// A batch copied from another replica of the group, or from the same replica id
/// of another group, even where both share one sealing key (so only the bound
/// associated data tells them apart).
pub fn foreign_batches_are_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let shared_key = |g: u64, r: u64| {
        let mut c = SealedConfig::new(g, r);
        c.key_label = format!("shared-key-{group}");
        c
    };
    let write = |dir: &Path, cfg: SealedConfig| {
        let mut s = Sealed::open(SledLog::open(dir).unwrap(), hsm.clone(), cfg).unwrap();
        for ops in history().iter().take(8) {
            apply_ops(&mut s, ops).unwrap();
            s.sync().unwrap();
        }
    };
    for (victim, donor) in [
        (shared_key(group, 1), shared_key(group, 2)),
        (shared_key(group + 1, 1), shared_key(group + 2, 1)),
        (
            SealedConfig::new(group + 3, 1),
            SealedConfig::new(group + 3, 2),
        ),
    ] {
        let (vd, dd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(vd.path(), victim.clone());
        write(dd.path(), donor);
        let stolen = {
            let db = raw_db(dd.path());
            db.open_tree("raft")
                .unwrap()
                .get(entry_key(12))
                .unwrap()
                .unwrap()
        };
        with_raw_tree(vd.path(), |t| {
            t.insert(entry_key(12), stolen).unwrap();
        });
        let r = Sealed::open(SledLog::open(vd.path()).unwrap(), hsm.clone(), victim);
        let (record, detail) = expect_tampered(r, 1);
        assert_eq!(
            record,
            SealedRecord::Batch {
                first: 12,
                last: 16
            },
            "{detail}"
        );
    }
}

/// The newest batch removed; a middle batch removed with the later entries moved
/// down to close the gap; a middle batch removed leaving the gap.
pub fn truncation_is_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    // Tail: drop 12..=16 (the newest batch).
    let dir = tempfile::tempdir().unwrap();
    write_history(dir.path(), &hsm, group, 1, 8);
    with_raw_tree(dir.path(), |t| {
        for i in 12..=16 {
            t.remove(entry_key(i)).unwrap();
        }
    });
    let (record, detail) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
    assert_eq!(record, SealedRecord::Entry { index: 12 }, "{detail}");

    // Middle, gap closed: drop 10..=11 and move 12..=16 down to 10..=14.
    let dir = tempfile::tempdir().unwrap();
    write_history(dir.path(), &hsm, group + 1, 1, 8);
    with_raw_tree(dir.path(), |t| {
        for i in 10..=16 {
            let v = t.get(entry_key(i + 2)).unwrap();
            match v {
                Some(v) if i + 2 <= 16 => {
                    let mut e: Entry = codec::decode_record::<Entry>(&v).unwrap();
                    e.index = i;
                    t.insert(entry_key(i), codec::encode_record(&e).unwrap())
                        .unwrap();
                }
                _ => {
                    t.remove(entry_key(i)).unwrap();
                }
            }
        }
    });
    let r = open(dir.path(), &hsm, group + 1, 1);
    let (record, detail) = expect_tampered(r, 1);
    assert!(
        matches!(
            record,
            SealedRecord::Entry { .. } | SealedRecord::Batch { .. }
        ),
        "{record}: {detail}"
    );

    // Middle, gap left: the inner store itself refuses a log with a hole.
    let dir = tempfile::tempdir().unwrap();
    write_history(dir.path(), &hsm, group + 2, 1, 8);
    with_raw_tree(dir.path(), |t| {
        t.remove(entry_key(10)).unwrap();
        t.remove(entry_key(11)).unwrap();
    });
    let (record, detail) = expect_tampered(open(dir.path(), &hsm, group + 2, 1), 1);
    assert!(
        matches!(record, SealedRecord::Container { .. }),
        "{record}: {detail}"
    );
}

/// An older copy of the disk, and an empty disk, once the counter moved on.
pub fn rollback_is_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let old = dir.path().join("old");
    let mut s = open(&live, &hsm, group, 1).unwrap();
    let h = history();
    for ops in &h[..5] {
        apply_ops(&mut s, ops).unwrap();
        s.sync().unwrap();
    }
    drop(s);
    copy_dir(&live, &old);
    let mut s = open(&live, &hsm, group, 1).unwrap();
    for ops in &h[5..7] {
        apply_ops(&mut s, ops).unwrap();
        s.sync().unwrap();
    }
    drop(s);
    match open(&old, &hsm, group, 1) {
        Err(StorageError::RolledBack {
            replica: 1,
            disk: 5,
            hsm: 7,
        }) => {}
        Err(e) => panic!("expected a rollback error, got {e}"),
        Ok(_) => panic!("an old disk image was opened"),
    }
    let empty = dir.path().join("empty");
    match open(&empty, &hsm, group, 1) {
        Err(StorageError::RolledBack {
            replica: 1,
            disk: 0,
            hsm: 7,
        }) => {}
        Err(e) => panic!("expected a rollback error, got {e}"),
        Ok(_) => panic!("an empty disk replaced a written one unnoticed"),
    }
    // The live disk still opens, and a fresh member id starts clean.
    assert!(open(&live, &hsm, group, 1).is_ok());
    assert!(open(&empty, &hsm, group, 9).is_ok());
}

/// Where a simulated crash cuts a `sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The process dies before `sync` runs: the staged write never reaches disk.
    BeforeSync,
    /// The HSM stops answering when the batch or head is sealed.
    SealFails,
    /// The data is durable; the process dies before the counter advances.
    BeforeCounter,
    /// The counter advanced; the process dies before `sync` returns.
    AfterCounter,
}

const MODE_NORMAL: u8 = 0;
const MODE_FAIL_SEAL: u8 = 1;
const MODE_FAIL_BEFORE_ADVANCE: u8 = 2;
const MODE_FAIL_AFTER_ADVANCE: u8 = 3;

/// An HSM wrapper that cuts a write at a chosen step, as a crash would.
#[derive(Clone)]
pub struct FaultHsm<H> {
    inner: H,
    mode: Arc<AtomicU8>,
}

impl<H: Hsm> Hsm for FaultHsm<H> {
    fn key(&self, label: &str, kind: KeyKind) -> Result<KeyHandle, HsmError> {
        self.inner.key(label, kind)
    }
    fn find_key(&self, label: &str, kind: KeyKind) -> Result<Option<KeyHandle>, HsmError> {
        self.inner.find_key(label, kind)
    }
    fn seal(&self, key: KeyHandle, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        if self.mode.load(Ordering::SeqCst) == MODE_FAIL_SEAL {
            return Err(HsmError::Unavailable {
                operation: "cut: seal",
                cause: None,
            });
        }
        self.inner.seal(key, aad, plaintext)
    }
    fn unseal(
        &self,
        key: KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.inner.unseal(key, aad, sealed)
    }
    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<[u8; 64], HsmError> {
        self.inner.sign(key, message)
    }
    fn public_key(&self, key: KeyHandle) -> Result<[u8; 32], HsmError> {
        self.inner.public_key(key)
    }
    fn mac(&self, key: KeyHandle, data: &[u8]) -> Result<[u8; 32], HsmError> {
        self.inner.mac(key, data)
    }
    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.inner.random(out)
    }
    fn counter(&self, label: &str) -> Result<Counter, HsmError> {
        self.inner.counter(label)
    }
    fn advance_counter(&self, label: &str, binding: &[u8; 32]) -> Result<u64, HsmError> {
        match self.mode.load(Ordering::SeqCst) {
            MODE_FAIL_BEFORE_ADVANCE => Err(HsmError::Unavailable {
                operation: "cut: before advance",
                cause: None,
            }),
            MODE_FAIL_AFTER_ADVANCE => {
                self.inner.advance_counter(label, binding)?;
                Err(HsmError::Unavailable {
                    operation: "cut: after advance",
                    cause: None,
                })
            }
            _ => self.inner.advance_counter(label, binding),
        }
    }
}

/// A crash at every step of every write of the history: reopening never raises a
/// false alarm and never loses a write whose `sync` returned; the interrupted
/// write is either wholly there or wholly absent, as the cut point dictates.
pub fn crash_at_every_step<H: Hsm + Clone>(hsm: H, group: u64) {
    let views = model_views();
    let cycles = history().len();
    let cuts = [
        Cut::BeforeSync,
        Cut::SealFails,
        Cut::BeforeCounter,
        Cut::AfterCounter,
    ];
    let h = history();
    let mut case = 0;
    for crash_at in 0..cycles {
        for cut in cuts {
            case += 1;
            let group = group * 1000 + case;
            let label = SealedConfig::new(group, 1).counter_label;
            let dir = tempfile::tempdir().unwrap();
            let faulty = FaultHsm {
                inner: hsm.clone(),
                mode: Arc::new(AtomicU8::new(MODE_NORMAL)),
            };
            {
                let mut s = open(dir.path(), &faulty, group, 1).unwrap();
                for ops in &h[..crash_at] {
                    apply_ops(&mut s, ops).unwrap();
                    s.sync().unwrap();
                }
                let mode = match cut {
                    Cut::BeforeSync => None,
                    Cut::SealFails => Some(MODE_FAIL_SEAL),
                    Cut::BeforeCounter => Some(MODE_FAIL_BEFORE_ADVANCE),
                    Cut::AfterCounter => Some(MODE_FAIL_AFTER_ADVANCE),
                };
                if cut == Cut::SealFails {
                    // The HSM stops before the cycle's writes: snapshots and
                    // compactions seal as they are made, so the failure may come
                    // from them rather than from the sync.
                    faulty.mode.store(MODE_FAIL_SEAL, Ordering::SeqCst);
                    if apply_ops(&mut s, &h[crash_at]).is_ok() {
                        assert!(s.sync().is_err(), "{cut:?} fails the sync");
                    }
                    faulty.mode.store(MODE_NORMAL, Ordering::SeqCst);
                } else {
                    apply_ops(&mut s, &h[crash_at]).unwrap();
                }
                if let Some(mode) = mode.filter(|_| cut != Cut::SealFails) {
                    faulty.mode.store(mode, Ordering::SeqCst);
                    assert!(s.sync().is_err(), "{cut:?} fails the sync");
                    faulty.mode.store(MODE_NORMAL, Ordering::SeqCst);
                }
                if mode.is_some() {
                    // The store refuses writes until it is reopened.
                    assert!(matches!(
                        s.sync(),
                        Err(StorageError::Poisoned { replica: 1, .. })
                    ));
                }
            }
            let reopened = open(dir.path(), &hsm, group, 1)
                .unwrap_or_else(|e| panic!("false alarm after {cut:?} at cycle {crash_at}: {e}"));
            let expected = match cut {
                Cut::BeforeSync | Cut::SealFails => crash_at,
                Cut::BeforeCounter | Cut::AfterCounter => crash_at + 1,
            };
            assert_matches_model(
                &view(&reopened),
                &views[expected],
                &format!("state after {cut:?} at cycle {crash_at}"),
            );
            assert_eq!(
                reopened.counter(),
                hsm.counter(&label).unwrap().value,
                "counter completed after {cut:?} at cycle {crash_at}"
            );
            // Life goes on: the rest of the history, one more reopen, no alarm.
            let mut s = reopened;
            if expected == crash_at {
                apply_ops(&mut s, &h[crash_at]).unwrap();
                s.sync().unwrap();
            }
            for ops in &h[crash_at + 1..] {
                apply_ops(&mut s, ops).unwrap();
                s.sync().unwrap();
            }
            drop(s);
            let s = open(dir.path(), &hsm, group, 1).unwrap();
            assert_matches_model(&view(&s), &views[cycles], "after the whole history");
        }
    }
}

/// An HSM that stops answering fails the write, and the store refuses to go on
/// until reopened; nothing is lost once the HSM is back.
pub fn hsm_outage_stops_the_store<H: Hsm + Clone>(hsm: H, group: u64, switch: &dyn Fn(bool)) {
    let dir = tempfile::tempdir().unwrap();
    let h = history();
    let mut s = open(dir.path(), &hsm, group, 1).unwrap();
    for ops in &h[..3] {
        apply_ops(&mut s, ops).unwrap();
        s.sync().unwrap();
    }
    apply_ops(&mut s, &h[3]).unwrap();
    switch(false);
    assert!(matches!(s.sync(), Err(StorageError::Hsm(_))));
    switch(true);
    assert!(matches!(s.append(&[]), Err(StorageError::Poisoned { .. })));
    drop(s);
    let s = open(dir.path(), &hsm, group, 1).unwrap();
    assert_matches_model(&view(&s), &model_views()[3], "after the outage");
}

fn replace_dir(dir: &Path, with: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    copy_dir(with, dir);
}

/// The fork: a write made durable but abandoned before its counter advanced
/// (image A), the replica restarted from the image before it (B) and wrote a
/// different write under the same number, then A put back. A bare counter
/// would accept A as clean; the counter's binding names the write it counted.
pub fn fork_is_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (live, image_a, image_b) = (
        dir.path().join("live"),
        dir.path().join("a"),
        dir.path().join("b"),
    );
    let faulty = FaultHsm {
        inner: hsm.clone(),
        mode: Arc::new(AtomicU8::new(MODE_NORMAL)),
    };
    let h = history();
    {
        let mut s = open(&live, &faulty, group, 1).unwrap();
        for ops in &h[..5] {
            apply_ops(&mut s, ops).unwrap();
            s.sync().unwrap();
        }
    }
    copy_dir(&live, &image_b);
    {
        let mut s = open(&live, &faulty, group, 1).unwrap();
        apply_ops(&mut s, &h[5]).unwrap();
        faulty
            .mode
            .store(MODE_FAIL_BEFORE_ADVANCE, Ordering::SeqCst);
        assert!(
            s.sync().is_err(),
            "the write is durable, its counter never moves"
        );
        faulty.mode.store(MODE_NORMAL, Ordering::SeqCst);
    }
    copy_dir(&live, &image_a);
    replace_dir(&live, &image_b);
    {
        // B is clean (it is what the counter names); the replica goes on and
        // writes something else as write 6: a vote for replica 3.
        let mut s = open(&live, &hsm, group, 1).unwrap();
        s.set_hard_state(&hard_state(2, 3, 4)).unwrap();
        s.sync().unwrap();
        assert_eq!(s.counter(), 6);
    }
    replace_dir(&live, &image_a);
    match open(&live, &hsm, group, 1) {
        Err(StorageError::Forked {
            replica: 1,
            write: 6,
        }) => {}
        Err(e) => panic!("expected a fork error, got {e}"),
        Ok(s) => panic!(
            "the abandoned write was accepted: vote {} in term {}",
            s.hard_state().vote,
            s.hard_state().term
        ),
    }
}

/// Authentic but stale records put back one at a time: an older head, an older
/// snapshot, an older batch, and the oldest batches removed with the clear
/// offset moved (a fake compaction).
pub fn stale_records_are_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (live, old) = (dir.path().join("live"), dir.path().join("old"));
    let h = history();
    {
        let mut s = open(&live, &hsm, group, 1).unwrap();
        for ops in &h[..4] {
            apply_ops(&mut s, ops).unwrap();
            s.sync().unwrap();
        }
    }
    copy_dir(&live, &old);
    {
        let mut s = open(&live, &hsm, group, 1).unwrap();
        for ops in &h[4..8] {
            apply_ops(&mut s, ops).unwrap();
            s.sync().unwrap();
        }
    }
    let old_value = |key: &[u8]| {
        let db = raw_db(&old);
        db.open_tree("raft").unwrap().get(key).unwrap().unwrap()
    };
    let (old_head, old_snapshot, old_batch) = (
        old_value(b"m/wrapper"),
        old_value(b"m/snapshot"),
        old_value(&entry_key(5)),
    );
    let variant = |name: &str, edit: &dyn Fn(&sled::Tree)| {
        let d = dir.path().join(name);
        copy_dir(&live, &d);
        with_raw_tree(&d, edit);
        open(&d, &hsm, group, 1)
    };

    match variant("head", &|t| {
        t.insert(b"m/wrapper", old_head.clone()).unwrap();
    }) {
        Err(StorageError::RolledBack {
            replica: 1,
            disk: 4,
            hsm: 8,
        }) => {}
        Err(e) => panic!("older head: expected a rollback error, got {e}"),
        Ok(_) => panic!("older head accepted"),
    }
    let (record, detail) = expect_tampered(
        variant("snapshot", &|t| {
            t.insert(b"m/snapshot", old_snapshot.clone()).unwrap();
        }),
        1,
    );
    // The older snapshot (index 1) also sits below the log's compacted prefix,
    // which the inner store's own check may see first.
    assert!(
        matches!(
            record,
            SealedRecord::Snapshot { .. } | SealedRecord::Container { .. }
        ),
        "{record}: {detail}"
    );
    let (record, detail) = expect_tampered(
        variant("batch", &|t| {
            t.insert(entry_key(5), old_batch.clone()).unwrap();
        }),
        1,
    );
    assert!(
        matches!(
            record,
            SealedRecord::Batch { first: 5, .. } | SealedRecord::Entry { .. }
        ),
        "{record}: {detail}"
    );
    // After cycle 8 the log holds the batches 5..=9, 10..=11 and 12..=16 (compaction
    // to 7 kept the whole batch 5..=9) and the snapshot at 6. Drop entries 5..=6
    // and move the clear offset to 6, as a compaction to 7 would have.
    let (record, detail) = expect_tampered(
        variant("front", &|t| {
            for i in 5..=6 {
                t.remove(entry_key(i)).unwrap();
            }
            let mut offset = 6u64.to_be_bytes().to_vec();
            offset.extend_from_slice(&1u64.to_be_bytes());
            t.insert(b"m/offset", offset).unwrap();
        }),
        1,
    );
    assert_eq!(record, SealedRecord::Entry { index: 7 }, "{detail}");
}

/// A head copied from another replica that shares the sealing key.
pub fn foreign_head_is_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let cfg = |r: u64| {
        let mut c = SealedConfig::new(group, r);
        c.key_label = format!("shared-head-key-{group}");
        c
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, r) in [(a.path(), 1), (b.path(), 2)] {
        let mut s = Sealed::open_sled(dir, hsm.clone(), cfg(r)).unwrap();
        for ops in history().iter().take(6) {
            apply_ops(&mut s, ops).unwrap();
            s.sync().unwrap();
        }
    }
    let donor = {
        let db = raw_db(b.path());
        db.open_tree("raft")
            .unwrap()
            .get(b"m/wrapper")
            .unwrap()
            .unwrap()
    };
    with_raw_tree(a.path(), |t| {
        t.insert(b"m/wrapper", donor).unwrap();
    });
    let (record, detail) = expect_tampered(Sealed::open_sled(a.path(), hsm.clone(), cfg(1)), 1);
    assert_eq!(record, SealedRecord::Head, "{detail}");
}

/// Bytes flipped in sled's own files, below its API: opening never panics, and
/// either fails or serves exactly what was last synced. `seed` picks the bytes.
pub fn raw_file_damage_never_serves_bad_data<H: Hsm + Clone>(hsm: H, group: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    write_history(&live, &hsm, group, 1, 8);
    let expected = view(&open(&live, &hsm, group, 1).unwrap());
    let mut files = Vec::new();
    for e in std::fs::read_dir(&live).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() && e.metadata().unwrap().len() > 0 {
            files.push(e.file_name());
        }
    }
    files.sort();
    let mut x = seed | 1;
    let (mut refused, mut served) = (0, 0);
    for case in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let file = &files[(x as usize) % files.len()];
        let d = dir.path().join(format!("case-{case}"));
        copy_dir(&live, &d);
        let path = d.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let pos = ((x >> 20) as usize) % bytes.len();
        bytes[pos] ^= 1 << ((x >> 8) % 8);
        std::fs::write(&path, &bytes).unwrap();
        match open(&d, &hsm, group, 1) {
            Ok(s) => {
                assert_eq!(
                    view(&s),
                    expected,
                    "seed {seed}: byte {pos} of {file:?} flipped, and different data was served"
                );
                served += 1;
            }
            Err(_) => refused += 1,
        }
    }
    eprintln!("seed {seed}: {refused} damaged copies refused, {served} unharmed copies served");
}

// --- mutation tests (issue 13): each kills a cargo-mutants survivor ---------

/// The snapshot's clear metadata (kept by the inner store beside the sealed
/// blob) edited alone, field by field: each edit is refused, though the blob
/// itself is the one the head names.
pub fn snapshot_metadata_edited_alone_is_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    type SnapshotEdit = Box<dyn Fn(&mut Snapshot)>;
    let edits: Vec<(&str, SnapshotEdit)> = vec![
        ("index", Box::new(|s| s.mut_metadata().index += 1)),
        ("term", Box::new(|s| s.mut_metadata().term += 1)),
        (
            "conf state",
            Box::new(|s| s.mut_metadata().mut_conf_state().voters.push(9)),
        ),
    ];
    for (i, (what, edit)) in edits.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let group = group * 100 + i as u64;
        write_history(dir.path(), &hsm, group, 1, 8);
        with_raw_tree(dir.path(), |t| {
            let stored = t.get(b"m/snapshot").unwrap().unwrap().to_vec();
            let mut s: Snapshot = codec::decode_record(&stored).unwrap();
            edit(&mut s);
            t.insert(b"m/snapshot", codec::encode_record(&s).unwrap())
                .unwrap();
        });
        let (_, cause) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
        assert!(
            matches!(cause, Tampering::MetadataMismatch),
            "{what}: {cause}"
        );
    }
}

/// A store that never held a snapshot reopens; a snapshot planted under its
/// head (which names none) is refused, whether it has an index or data.
pub fn snapshot_planted_under_a_head_without_one_is_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let planted: [(&str, u64, &[u8]); 2] = [("index", 3, b""), ("data", 0, b"planted")];
    for (i, (what, index, data)) in planted.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let group = group * 100 + i as u64;
        let mut s = open(dir.path(), &hsm, group, 1).unwrap();
        s.append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")])
            .unwrap();
        s.sync().unwrap();
        drop(s);
        let s = open(dir.path(), &hsm, group, 1).unwrap();
        assert_eq!(
            view(&s).entries.len(),
            3,
            "{what}: the honest store reopens"
        );
        drop(s);
        with_raw_tree(dir.path(), |t| {
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = index;
            snap.mut_metadata().term = 1;
            snap.data = data.to_vec().into();
            t.insert(b"m/snapshot", codec::encode_record(&snap).unwrap())
                .unwrap();
        });
        let (record, cause) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
        assert!(
            matches!(cause, Tampering::UnexpectedSnapshot),
            "{what}: {cause}"
        );
        assert_eq!(record, SealedRecord::Snapshot { index }, "{what}");
    }
}

/// The clear log offset with only its term edited: the front moved.
pub fn offset_term_edited_alone_is_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let dir = tempfile::tempdir().unwrap();
    write_history(dir.path(), &hsm, group, 1, 8);
    let mut sealed = (0, 0);
    with_raw_tree(dir.path(), |t| {
        let offset = t.get(b"m/offset").unwrap().unwrap().to_vec();
        let index = u64::from_be_bytes(offset[..8].try_into().unwrap());
        let term = u64::from_be_bytes(offset[8..16].try_into().unwrap());
        sealed = (index, term);
        let mut edited = index.to_be_bytes().to_vec();
        edited.extend_from_slice(&(term + 1).to_be_bytes());
        t.insert(b"m/offset", edited).unwrap();
    });
    let (_, cause) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
    assert!(
        matches!(
            cause,
            Tampering::FrontMoved { found_index, found_term, sealed_index, sealed_term }
                if (found_index, sealed_index) == (sealed.0, sealed.0)
                    && (found_term, sealed_term) == (sealed.1 + 1, sealed.1)
        ),
        "{cause}"
    );
}

/// A batch whose clear header claims entries past the log's sealed end: cut
/// short, from the entry after the log's last.
pub fn batch_header_past_the_end_is_cut_short<H: Hsm + Clone>(hsm: H, group: u64) {
    let dir = tempfile::tempdir().unwrap();
    // After cycle 8 the newest batch is 12..=16, and 16 is the log's last entry.
    write_history(dir.path(), &hsm, group, 1, 8);
    with_raw_tree(dir.path(), |t| {
        let stored = t.get(entry_key(12)).unwrap().unwrap().to_vec();
        let mut e: Entry = codec::decode_record(&stored).unwrap();
        let mut blob = e.data.to_vec();
        // The header: version byte, then first, last, last term (u64 each).
        assert_eq!(blob[1..9], 12u64.to_be_bytes());
        assert_eq!(blob[9..17], 16u64.to_be_bytes());
        blob[9..17].copy_from_slice(&20u64.to_be_bytes());
        e.data = blob.into();
        t.insert(entry_key(12), codec::encode_record(&e).unwrap())
            .unwrap();
    });
    let (record, cause) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
    assert_eq!(
        record,
        SealedRecord::Batch {
            first: 12,
            last: 20
        }
    );
    assert!(
        matches!(cause, Tampering::CutShort { from: 17, to: 20 }),
        "{cause}"
    );
}

/// A placeholder (an entry after a batch's first, which holds only its index
/// and term) given data: refused, though its index and term are right.
pub fn placeholder_given_data_is_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    let dir = tempfile::tempdir().unwrap();
    write_history(dir.path(), &hsm, group, 1, 8);
    with_raw_tree(dir.path(), |t| {
        let stored = t.get(entry_key(13)).unwrap().unwrap().to_vec();
        let mut e: Entry = codec::decode_record(&stored).unwrap();
        assert!(e.data.is_empty(), "13 is inside the batch 12..=16");
        e.data = b"planted".to_vec().into();
        t.insert(entry_key(13), codec::encode_record(&e).unwrap())
            .unwrap();
    });
    let (record, cause) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
    assert_eq!(record, SealedRecord::Entry { index: 13 });
    assert!(matches!(cause, Tampering::PlaceholderEdited), "{cause}");
}

/// A store with no head (never written, or its head deleted) must hold nothing
/// else: entries alone, a snapshot alone or a hard state alone are refused.
pub fn records_without_a_head_are_each_detected<H: Hsm + Clone>(hsm: H, group: u64) {
    type Plant = Box<dyn Fn(&sled::Tree)>;
    let plants: Vec<(&str, Plant)> = vec![
        (
            "an entry",
            Box::new(|t: &sled::Tree| {
                t.insert(
                    entry_key(1),
                    codec::encode_record(&entry(1, 1, "x")).unwrap(),
                )
                .unwrap();
            }),
        ),
        (
            "a snapshot",
            Box::new(|t: &sled::Tree| {
                t.insert(
                    b"m/snapshot",
                    codec::encode_record(&snapshot(3, 1, "")).unwrap(),
                )
                .unwrap();
            }),
        ),
        (
            "a hard state",
            Box::new(|t: &sled::Tree| {
                t.insert(
                    b"m/hard_state",
                    codec::encode_record(&hard_state(1, 0, 0)).unwrap(),
                )
                .unwrap();
            }),
        ),
    ];
    for (i, (what, plant)) in plants.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let group = group * 100 + i as u64;
        // Opened once (an empty store), never written.
        drop(open(dir.path(), &hsm, group, 1).unwrap());
        with_raw_tree(dir.path(), plant);
        let (record, cause) = expect_tampered(open(dir.path(), &hsm, group, 1), 1);
        assert_eq!(record, SealedRecord::Head, "{what}");
        assert!(matches!(cause, Tampering::NoHead), "{what}: {cause}");
    }
}
