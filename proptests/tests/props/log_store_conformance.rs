//! The conformance suite every `LogStore` must pass: random sequences of append
//! (including overwrites of a conflicting tail and invalid appends), hard-state
//! writes, local snapshots, compaction, snapshot installs, syncs, and — for durable
//! stores — reopening after a clean sync or after a crash that loses everything
//! since the last sync. After every operation the store is compared with a simple
//! model.
//!
//! The sealed store (`Sealed<SledLog, SoftHsm>`) runs the same suite with one
//! allowance: it compacts whole sealed batches only, so it may hold entries before
//! the model's first index (raft-rs never reads or appends below its first index,
//! so the extra prefix is invisible to it).
//!
//! proptest prints the failing case and its seed; set `PROPTEST_CASES` for longer
//! runs.

use proptest::prelude::*;
use raft::prelude::{Entry, HardState, Snapshot};
use raft::GetEntriesContext;
use vaultfleet::{LogStore, MemLog, Sealed, SealedConfig, SledLog, SoftHsm};

#[derive(Debug, Clone)]
enum Op {
    /// Append `count` entries starting `back` entries before last+1 (may be invalid).
    Append {
        back: u64,
        count: u64,
        term_bump: u64,
        gap: bool,
    },
    HardState {
        term: u64,
        vote: u64,
        commit: u64,
    },
    /// Save a snapshot `back` entries before the last index.
    SaveSnapshot {
        back: u64,
    },
    /// Compact up to `back` entries before (snapshot index + 1).
    Compact {
        back: u64,
    },
    /// Install a snapshot `ahead` entries past the last index.
    InstallSnapshot {
        ahead: u64,
    },
    Sync,
    /// Sync, close and reopen (durable stores only).
    Reopen,
    /// Close without sync and reopen: what was not synced is lost (durable stores only).
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4, 1u64..6, 0u64..2, proptest::bool::weighted(0.05))
            .prop_map(|(back, count, term_bump, gap)| Op::Append { back, count, term_bump, gap }),
        2 => (0u64..10, 0u64..4, 0u64..40).prop_map(|(term, vote, commit)| Op::HardState { term, vote, commit }),
        1 => (0u64..5).prop_map(|back| Op::SaveSnapshot { back }),
        1 => (0u64..5).prop_map(|back| Op::Compact { back }),
        1 => (0u64..6).prop_map(|ahead| Op::InstallSnapshot { ahead }),
        2 => Just(Op::Sync),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// The model: what a correct store holds.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    offset: (u64, u64),
    entries: Vec<(u64, u64, Vec<u8>)>,
    snapshot: (u64, u64),
    hard_state: (u64, u64, u64),
}

impl Model {
    fn first(&self) -> u64 {
        self.offset.0 + 1
    }
    fn last(&self) -> u64 {
        self.offset.0 + self.entries.len() as u64
    }
    fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.offset.1, |e| e.1)
    }
    fn term(&self, index: u64) -> Option<u64> {
        if index == self.offset.0 {
            return Some(self.offset.1);
        }
        if index == self.snapshot.0 && index != 0 {
            return Some(self.snapshot.1);
        }
        if index < self.first() || index > self.last() {
            return None;
        }
        Some(self.entries[(index - self.first()) as usize].1)
    }
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

fn snapshot(index: u64, term: u64) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.data = format!("state@{index}").into_bytes().into();
    s
}

fn compare<L: LogStore>(
    store: &L,
    model: &Model,
    step: usize,
    whole_batches: bool,
) -> Result<(), TestCaseError> {
    let first = store.first_index().ok();
    if whole_batches {
        prop_assert!(
            first.is_some_and(|f| f <= model.first()),
            "first index {:?} after step {} is past the model's {}",
            first,
            step,
            model.first()
        );
    } else {
        prop_assert_eq!(
            first,
            Some(model.first()),
            "first index after step {}",
            step
        );
    }
    prop_assert_eq!(
        store.last_index().ok(),
        Some(model.last()),
        "last index after step {}",
        step
    );
    let from = if whole_batches {
        model.offset.0
    } else {
        model.offset.0.saturating_sub(1)
    };
    for i in from..=model.last() + 1 {
        prop_assert_eq!(
            store.term(i).ok(),
            model.term(i),
            "term({}) after step {}",
            i,
            step
        );
    }
    if !model.entries.is_empty() {
        let got = store
            .entries(
                model.first(),
                model.last() + 1,
                None,
                GetEntriesContext::empty(false),
            )
            .map_err(|e| TestCaseError::fail(format!("entries: {e}")))?;
        let got: Vec<(u64, u64, Vec<u8>)> = got
            .iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect();
        prop_assert_eq!(&got, &model.entries, "entries after step {}", step);
        // max_size bounds the result but never below one entry.
        let one = store
            .entries(
                model.first(),
                model.last() + 1,
                Some(0),
                GetEntriesContext::empty(false),
            )
            .map_err(|e| TestCaseError::fail(format!("entries: {e}")))?;
        prop_assert_eq!(one.len(), 1);
    }
    prop_assert!(
        store
            .entries(
                model.first().saturating_sub(1).max(1),
                model.last() + 1,
                None,
                GetEntriesContext::empty(false)
            )
            .is_err()
            || model.offset.0 == 0
            || whole_batches
    );
    let hs = store.hard_state();
    prop_assert_eq!(
        (hs.term, hs.vote, hs.commit),
        model.hard_state,
        "hard state after step {}",
        step
    );
    let snap = store.latest_snapshot().get_metadata();
    prop_assert_eq!(
        (snap.index, snap.term),
        model.snapshot,
        "snapshot after step {}",
        step
    );
    Ok(())
}

/// Runs `ops` against a store opened by `open` (called again to reopen, when
/// `durable`), checking it against the model after every step.
fn conformance<L: LogStore>(
    ops: &[Op],
    durable: bool,
    whole_batches: bool,
    open: &dyn Fn() -> L,
) -> Result<(), TestCaseError> {
    let mut store = Some(open());
    let mut model = Model::default();
    let mut synced = Model::default();
    let mut data_seq = 0u64;
    for (step, op) in ops.iter().enumerate() {
        let s = store.as_mut().expect("store is open");
        match op {
            Op::Append {
                back,
                count,
                term_bump,
                gap,
            } => {
                // Raft never overwrites a committed entry: start after the commit index.
                let start = if *gap {
                    model.last() + 2
                } else {
                    (model.last() + 1)
                        .saturating_sub(*back)
                        .max(1)
                        .max(model.hard_state.2 + 1)
                };
                let term = model.last_term() + term_bump;
                let batch: Vec<Entry> = (0..*count)
                    .map(|k| {
                        data_seq += 1;
                        entry(start + k, term.max(1), &data_seq.to_be_bytes())
                    })
                    .collect();
                let valid = start >= model.first() && start <= model.last() + 1;
                if whole_batches && (start < model.first() || start <= model.snapshot.0) {
                    // raft-rs never appends below its first index, nor over a
                    // snapshot (snapshots cover applied, hence committed, entries).
                    // A store that kept whole batches holds entries the model
                    // dropped, so these impossible appends have no single answer.
                    continue;
                }
                let result = s.append(&batch);
                prop_assert_eq!(
                    result.is_ok(),
                    valid,
                    "append at {} over {}..={}: {:?}",
                    start,
                    model.first(),
                    model.last(),
                    result
                );
                if valid {
                    model.entries.truncate((start - model.first()) as usize);
                    model
                        .entries
                        .extend(batch.iter().map(|e| (e.index, e.term, e.data.to_vec())));
                }
            }
            Op::HardState { term, vote, commit } => {
                // Raft's commit index never passes the last index it holds.
                let commit = &(*commit).min(model.last()).max(model.hard_state.2);
                let mut hs = HardState::default();
                hs.term = *term;
                hs.vote = *vote;
                hs.commit = *commit;
                s.set_hard_state(&hs)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.hard_state = (*term, *vote, *commit);
            }
            Op::SaveSnapshot { back } => {
                let index = model.last().saturating_sub(*back);
                if index > model.offset.0 && index >= model.snapshot.0 {
                    let term = model.term(index).unwrap_or(0);
                    s.save_snapshot(&snapshot(index, term))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.snapshot = (index, term);
                }
            }
            Op::Compact { back } => {
                let index = (model.snapshot.0 + 1).saturating_sub(*back);
                let result = s.compact(index);
                let valid = index <= model.snapshot.0 + 1 && index <= model.last() + 1;
                prop_assert_eq!(
                    result.is_ok(),
                    valid || index <= model.first(),
                    "compact({}) {:?}",
                    index,
                    result
                );
                if result.is_ok() && index > model.first() {
                    let drop = (index - model.first()) as usize;
                    let last_dropped = model.entries[drop - 1].clone();
                    model.entries.drain(..drop);
                    model.offset = (last_dropped.0, last_dropped.1);
                }
            }
            Op::InstallSnapshot { ahead } => {
                let index = model.last() + ahead;
                let term = model.last_term() + 1;
                s.apply_snapshot(&snapshot(index, term))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.entries.clear();
                model.offset = (index, term);
                model.snapshot = (index, term);
                model.hard_state.0 = model.hard_state.0.max(term);
                model.hard_state.2 = index;
            }
            Op::Sync => {
                s.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
                synced = model.clone();
            }
            Op::Reopen | Op::Crash if durable => {
                if matches!(op, Op::Reopen) {
                    s.sync().map_err(|e| TestCaseError::fail(e.to_string()))?;
                    synced = model.clone();
                }
                drop(store.take());
                store = Some(open());
                model = synced.clone();
            }
            Op::Reopen | Op::Crash => {}
        }
        compare(
            store.as_ref().expect("store is open"),
            &model,
            step,
            whole_batches,
        )?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mem_log_conforms(ops in proptest::collection::vec(op(), 1..80)) {
        conformance(&ops, false, false, &MemLog::new)?;
    }
}

proptest! {
    // Each case opens sled several times; fewer cases keep CI well inside its budget.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn sled_log_conforms(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("log");
        conformance(&ops, true, false, &|| SledLog::open(&path).expect("open sled log"))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn sealed_sled_log_conforms(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("log");
        let hsm = SoftHsm::from_seed(ops.len() as u64);
        conformance(&ops, true, true, &|| {
            Sealed::open_sled(&path, hsm.clone(), SealedConfig::new(1, 1))
                .expect("open sealed log: no false alarm after a clean reopen or a crash")
        })?;
    }
}
