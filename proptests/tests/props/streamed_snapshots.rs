//! Property tests of steps 1-2 of the streamed-snapshot design
//! (docs/proposals/streamed-snapshots.md): `CowMap` against a `BTreeMap` model
//! (random interleavings; every view stays as it was taken), and for
//! `BackupVault` and `KvStore`, `snapshot_to` and a view write exactly the
//! bytes of `snapshot()`, and `restore_from` through a one-byte reader restores
//! what `restore` does.

use std::collections::BTreeMap;
use std::io::{self, Read};

use proptest::prelude::*;
use vaultfleet::state_machine::{CowMap, KvStore, SnapshotView};
use vaultfleet::StateMachine;
use vaultfleet_vault::wire::{vault_command, VaultCommand, VaultConsume, VaultRequestId};
use vaultfleet_vault::BackupVault;

#[derive(Debug, Clone)]
enum Op {
    Insert(u16, u32),
    GetMut(u16, u32),
    GetOrInsert(u16, u32),
    Remove(u16),
    View,
}

fn op(keys: u16) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..keys, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (0..keys, any::<u32>()).prop_map(|(k, v)| Op::GetMut(k, v)),
        1 => (0..keys, any::<u32>()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
        3 => (0..keys).prop_map(Op::Remove),
        1 => Just(Op::View),
    ]
}

/// A reader that hands out one byte per call.
struct OneByte<'a>(&'a [u8]);

impl Read for OneByte<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

fn written(view: &dyn SnapshotView) -> Vec<u8> {
    let mut out = Vec::new();
    view.snapshot_to(&mut out).unwrap();
    out
}

fn consume(user: &[u8], sequence: u64, digest: u8) -> Vec<u8> {
    let mut request = VaultRequestId::new();
    request.client = 7;
    request.sequence = sequence;
    let mut c = VaultConsume::new();
    c.request_digest = vec![digest; 32];
    let mut command = VaultCommand::new();
    command.user = user.to_vec();
    command.request = Some(request).into();
    command.op = Some(vault_command::Op::Consume(c));
    vaultfleet_vault::wire::encode_bounded(&command)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn cow_map_matches_a_btree_map_and_views_stay_frozen(
        leaf_max in 4usize..24,
        ops in (1u16..400).prop_flat_map(|keys| proptest::collection::vec(op(keys), 0..600)),
    ) {
        let mut map = CowMap::with_leaf_max(leaf_max);
        let mut model = BTreeMap::new();
        let mut views = Vec::new();
        for op in ops {
            match op {
                Op::Insert(k, v) => prop_assert_eq!(map.insert(k, v), model.insert(k, v)),
                Op::GetMut(k, v) => {
                    let got = map.get_mut(&k).map(|x| { *x ^= v; *x });
                    let want = model.get_mut(&k).map(|x| { *x ^= v; *x });
                    prop_assert_eq!(got, want);
                }
                Op::GetOrInsert(k, v) => {
                    *map.get_or_insert_with(k, || v) += 1;
                    *model.entry(k).or_insert(v) += 1;
                }
                Op::Remove(k) => prop_assert_eq!(map.remove(&k), model.remove(&k)),
                Op::View => views.push((map.view(), model.clone())),
            }
            prop_assert_eq!(map.check_invariants(), Ok(()));
            prop_assert_eq!(map.len(), model.len());
        }
        prop_assert!(map.iter().eq(model.iter()));
        for (view, frozen) in &views {
            prop_assert_eq!(view.len(), frozen.len());
            prop_assert!(view.iter().eq(frozen.iter()), "a view changed after it was taken");
        }
    }

    #[test]
    fn a_vaults_stream_is_its_snapshot_and_restores_through_any_reader(
        users in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..40), 0..60),
        consumes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..80),
    ) {
        let users: Vec<Vec<u8>> = users.into_iter().collect();
        let mut v = BackupVault::new();
        for (i, u) in users.iter().enumerate() {
            prop_assert!(v.insert_user_for_bench(u, i as u64));
        }
        let before = v.snapshot().unwrap();
        let view = v.snapshot_view().unwrap();
        for (n, (pick, digest)) in consumes.iter().enumerate() {
            if !users.is_empty() {
                v.apply(1_000 + n as u64, &consume(&users[pick.index(users.len())], n as u64, *digest));
            }
        }
        prop_assert_eq!(written(&*view), before, "the view is the state it was taken from");
        let whole = v.snapshot().unwrap();
        let mut streamed = Vec::new();
        v.snapshot_to(&mut streamed).unwrap();
        prop_assert_eq!(&streamed, &whole);
        let mut back = BackupVault::new();
        back.restore_from(&mut OneByte(&streamed)).unwrap();
        prop_assert_eq!(&back, &v);
        let mut by_buffer = BackupVault::new();
        by_buffer.restore(&whole).unwrap();
        prop_assert_eq!(&back, &by_buffer);
        prop_assert!(v.blank().is_some_and(|b| b.is_empty()));
    }

    #[test]
    fn the_default_stream_methods_are_the_snapshot(
        puts in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..16), proptest::collection::vec(any::<u8>(), 0..32)), 0..40),
    ) {
        let mut kv = KvStore::new();
        for (i, (k, val)) in puts.iter().enumerate() {
            kv.apply(i as u64 + 1, &KvStore::put(k.clone(), val.clone()));
        }
        let whole = kv.snapshot().unwrap();
        let mut streamed = Vec::new();
        kv.snapshot_to(&mut streamed).unwrap();
        prop_assert_eq!(&streamed, &whole);
        prop_assert_eq!(written(&*kv.snapshot_view().unwrap()), whole.clone());
        let mut back = KvStore::new();
        back.restore_from(&mut OneByte(&streamed)).unwrap();
        prop_assert_eq!(back.snapshot().unwrap(), whole);
        prop_assert!(kv.blank().is_none());
    }
}
