//! Log append throughput: plain stores against sealed ones, with the soft HSM and
//! with SoftHSM2 over PKCS#11, for batches of 1, 64 and 1024 entries.
//!
//! One iteration is one Ready cycle's worth of writes: append a batch, record the
//! hard state, `sync` (for sled: one atomic batch and an fsync; for a sealed store:
//! seal the batch and the head, fsync, advance the HSM counter). Every 64 cycles
//! the log is snapshotted and compacted, as a replica does, so it stays bounded.
//!
//! `cargo bench -p vaultfleet-bench --bench storage`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use raft::prelude::{HardState, Snapshot};
use vaultfleet::hsm::Hsm;
use vaultfleet::{LogStore, MemLog, Sealed, SealedConfig, SledLog, SoftHsm};
use vaultfleet_bench::entries;

const PAYLOAD: usize = 256;
const BATCHES: [usize; 3] = [1, 64, 1024];

/// One Ready cycle; compacts every 64 cycles.
fn cycle<L: LogStore>(store: &mut L, batch: usize, n: &mut u64) {
    let first = store.last_index().expect("last index") + 1;
    store
        .append(&entries(first, batch, 1, PAYLOAD))
        .expect("append");
    let last = first + batch as u64 - 1;
    let mut hs = HardState::default();
    hs.term = 1;
    hs.commit = last;
    store.set_hard_state(&hs).expect("hard state");
    *n += 1;
    if *n % 64 == 0 {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = last;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        store.save_snapshot(&snap).expect("snapshot");
        store.compact(last + 1).expect("compact");
    }
    store.sync().expect("sync");
}

fn run<L: LogStore>(c: &mut Criterion, group: &str, name: &str, mut open: impl FnMut() -> L) {
    let mut g = c.benchmark_group(group);
    g.sample_size(20);
    for batch in BATCHES {
        g.throughput(Throughput::Elements(batch as u64));
        let mut store = open();
        let mut n = 0;
        g.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
            b.iter(|| cycle(&mut store, batch, &mut n))
        });
    }
    g.finish();
}

fn sealed_config(group: u64) -> SealedConfig {
    SealedConfig::new(group, 1)
}

fn benches(c: &mut Criterion) {
    // Pure sealing cost: no disk.
    run(c, "append-memory", "plain", MemLog::new);
    let hsm = SoftHsm::from_seed(1);
    let mut group = 0;
    run(c, "append-memory", "sealed-soft-hsm", || {
        group += 1;
        Sealed::open(MemLog::new(), hsm.clone(), sealed_config(group)).expect("open")
    });

    // Durable: sled with an fsync per cycle.
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut k = 0;
    let mut path = || {
        k += 1;
        dir.path().join(format!("store-{k}"))
    };
    run(c, "append-sled", "plain", || {
        SledLog::open(path()).expect("open")
    });
    run(c, "append-sled", "sealed-soft-hsm", || {
        group += 1;
        Sealed::open_sled(path(), hsm.clone(), sealed_config(group)).expect("open")
    });
    pkcs11(c, &mut path, &mut group);
}

#[cfg(feature = "pkcs11")]
fn pkcs11(c: &mut Criterion, path: &mut dyn FnMut() -> std::path::PathBuf, group: &mut u64) {
    let (p11, _token) = match vaultfleet_bench::softhsm2::throwaway() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipping the SoftHSM2 cases: {why}");
            return;
        }
    };
    // Warm the key so its creation is not measured.
    p11.key("warm", vaultfleet::hsm::KeyKind::Aead)
        .expect("key");
    run(c, "append-sled", "sealed-softhsm2", || {
        *group += 1;
        Sealed::open_sled(path(), p11.clone(), sealed_config(*group)).expect("open")
    });
    run(c, "append-memory", "sealed-softhsm2", || {
        *group += 1;
        Sealed::open(MemLog::new(), p11.clone(), sealed_config(*group)).expect("open")
    });
}

#[cfg(not(feature = "pkcs11"))]
fn pkcs11(_: &mut Criterion, _: &mut dyn FnMut() -> std::path::PathBuf, _: &mut u64) {
    eprintln!("skipping the SoftHSM2 cases: built without the pkcs11 feature");
}

criterion_group!(storage, benches);
criterion_main!(storage);
