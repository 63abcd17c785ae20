//! Property tests of the audit layer: Merkle inclusion and consistency proofs for
//! random tree sizes (every honest proof verifies, every altered one is refused),
//! and the note and checkpoint decoders on arbitrary input (an error, never a
//! panic; what they accept re-encodes to the same text).

use proptest::prelude::*;
use vaultfleet::StateMachine;
use vaultfleet_audit::merkle::{verify_consistency, verify_inclusion, MerkleTree};
use vaultfleet_audit::{Checkpoint, SignedNote};
use vaultfleet_vault::BackupVault;

fn tree(size: u64) -> MerkleTree {
    let mut t = MerkleTree::new();
    for i in 0..size {
        t.append(&i.to_le_bytes());
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn inclusion_proofs_hold_and_altered_ones_do_not(size in 1u64..300, pick in any::<u64>(), flip in any::<(usize, u8)>()) {
        let t = tree(size);
        let index = pick % size;
        let root = t.root();
        let proof = t.inclusion_proof(index, size).unwrap();
        let leaf = t.leaf_hashes()[index as usize];
        prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root).is_ok());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let i = flip.0 % bad.len();
            bad[i][(flip.1 % 32) as usize] ^= 1;
            prop_assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
            prop_assert!(verify_inclusion(&leaf, index, size, &proof[..proof.len() - 1], &root).is_err());
        }
        let mut longer = proof.clone();
        longer.push([0; 32]);
        prop_assert!(verify_inclusion(&leaf, index, size, &longer, &root).is_err());
    }

    #[test]
    fn consistency_proofs_hold_and_altered_ones_do_not(second in 1u64..300, pick in any::<u64>(), flip in any::<(usize, u8)>()) {
        let t = tree(second);
        let first = pick % (second + 1);
        let (r1, r2) = (t.root_at(first).unwrap(), t.root());
        let proof = t.consistency_proof(first, second).unwrap();
        prop_assert!(verify_consistency(first, second, &proof, &r1, &r2).is_ok());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let i = flip.0 % bad.len();
            bad[i][(flip.1 % 32) as usize] ^= 1;
            prop_assert!(verify_consistency(first, second, &bad, &r1, &r2).is_err());
        }
        if first > 0 && first < second {
            // A fork: the same size, another history.
            let mut forked = tree(first - 1);
            forked.append(b"a different last leaf");
            let fork_root = forked.root_at(first).unwrap();
            prop_assert!(verify_consistency(first, second, &proof, &fork_root, &r2).is_err());
        }
    }

    #[test]
    fn decoders_never_panic_and_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(note) = SignedNote::parse(&text) {
            prop_assert_eq!(SignedNote::parse(&note.encode()).unwrap(), note);
        }
        if let Ok(cp) = Checkpoint::parse(&text) {
            prop_assert_eq!(Checkpoint::parse(&cp.body()).unwrap(), cp);
        }
        // The vault's own decoders: a malformed command is an error response,
        // a malformed snapshot an error.
        let mut vault = BackupVault::new();
        let _ = vault.apply(1, &bytes);
        let _ = vault.restore(&bytes);
    }

    #[test]
    fn checkpoints_round_trip(origin in "[a-z][a-z0-9._/-]{0,40}", size in any::<u64>(), root in any::<[u8; 32]>()) {
        let cp = Checkpoint { origin, size, root, extensions: vec![] };
        prop_assert_eq!(Checkpoint::parse(&cp.body()).unwrap(), cp);
    }
}

mod encodings {
    use proptest::prelude::*;
    use vaultfleet::codec::DecodeError;
    use vaultfleet_audit::fleet::evidence::Evidence;
    use vaultfleet_audit::fleet::{ArtifactError, FleetArtifact, ReplicaKeys};
    use vaultfleet_audit::Bundle;

    fn artifact() -> impl Strategy<Value = FleetArtifact> {
        (
            "[a-z]{1,20}",
            1u64..1000,
            proptest::collection::btree_set(1u64..50, 1..8),
            any::<[u8; 32]>(),
            0u64..1_000_000,
            1u64..1_000_000,
        )
            .prop_map(|(fleet_id, epoch, ids, key, not_before, span)| {
                let ids: Vec<u64> = ids.into_iter().collect();
                let replicas = ids
                    .iter()
                    .map(|&id| ReplicaKeys {
                        id,
                        datacenter: format!("dc-{}", id % 3),
                        response_key: key,
                        transport_key: [id as u8; 32],
                        opaque_key: key,
                    })
                    .collect();
                let (voters, learners) = ids.split_at(ids.len().div_ceil(2));
                FleetArtifact {
                    fleet_id,
                    epoch,
                    replicas,
                    voters: voters.to_vec(),
                    learners: learners.to_vec(),
                    not_before,
                    not_after: not_before + span,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn artifacts_round_trip_and_have_one_encoding(a in artifact()) {
            let bytes = a.encode().unwrap();
            let back = FleetArtifact::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &a);
            prop_assert_eq!(back.encode().unwrap(), bytes);
        }

        #[test]
        fn artifact_bundle_and_evidence_decoders_never_panic(
            magic in prop::sample::select(vec![
                &b""[..],
                b"vaultfleet/fleet-artifact\x01",
                b"vaultfleet/bundle/v1",
                b"vaultfleet/evidence/v1",
            ]),
            tail in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            // Past the magic string too, so the field decoders see the input.
            let bytes = [magic, &tail].concat();
            if let Ok(a) = FleetArtifact::decode(&bytes) {
                prop_assert_eq!(a.encode().unwrap(), bytes.clone());
            }
            if let Ok(b) = Bundle::decode(&bytes) {
                prop_assert_eq!(b.encode().unwrap(), bytes.clone());
            }
            if let Ok(e) = Evidence::decode(&bytes) {
                prop_assert_eq!(e.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn decoders_refuse_prefixed_garbage_of_a_real_artifact(a in artifact(), cut in any::<prop::sample::Index>()) {
            let bytes = a.encode().unwrap();
            let cut = cut.index(bytes.len());
            let truncated = matches!(
                FleetArtifact::decode(&bytes[..cut]),
                Err(ArtifactError::Decode(DecodeError::Truncated { .. }))
            );
            prop_assert!(truncated, "cut at {}", cut);
        }
    }
}
