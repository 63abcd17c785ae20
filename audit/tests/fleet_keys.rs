//! Fleet keys over the air: the artifact's canonical encoding (golden vectors),
//! the witness's rules, the operator's countersignature, and `FleetVerifier`
//! refusing every broken link with its own error.

use vaultfleet::codec::DecodeError;
use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::{ArtifactError, ArtifactRule, FleetArtifact, ReplicaKeys};
use vaultfleet_audit::merkle::verify_consistency;
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{
    Bundle, BundleError, Checkpoint, FleetVerifier, LogError, ProofError, SignedNote, Witness,
    WitnessError, WitnessKey, WitnessKeySpec,
};

const NS: &str = "example.vault.fleet_keys.v1";
const T0: u64 = 1_800_000_000;
const DAY: u64 = 86_400;

fn artifact(epoch: u64, seed: u8) -> FleetArtifact {
    FleetArtifact {
        fleet_id: "example-fleet".into(),
        epoch,
        replicas: (1..=5u64)
            .map(|id| ReplicaKeys {
                id,
                datacenter: ["dc-a", "dc-b", "dc-c"][(id as usize - 1) % 3].into(),
                response_key: [seed.wrapping_add(id as u8); 32],
                transport_key: [seed.wrapping_add(0x40 + id as u8); 32],
                opaque_key: [seed.wrapping_add(0x80); 32],
            })
            .collect(),
        voters: vec![1, 2, 3, 4, 5],
        learners: vec![],
        not_before: T0,
        not_after: T0 + 365 * DAY,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn the_artifact_encoding_is_pinned_by_golden_vectors() {
    let a = artifact(1, 0);
    let bytes = a.encode().unwrap();
    assert_eq!(FleetArtifact::decode(&bytes).unwrap(), a);
    assert_eq!(
        bytes.len(),
        25 + 1 + 14 + 24 + 1 + 5 * (8 + 5 + 96) + 1 + 40 + 1
    );
    assert_eq!(
        hex(&a.digest().unwrap()),
        "4002e7a9a6c60b84970d85b3c559ccb06e421708169f7cff8e0c16425870d444",
        "the canonical encoding changed: bump the version instead"
    );
    let mut b = artifact(2, 7);
    b.learners = vec![5];
    b.voters = vec![1, 2, 3, 4];
    assert_eq!(
        hex(&b.digest().unwrap()),
        "a38813e6826c4901958baf41d1bd13ec2d13a204504de22a1b6676390f7c02be"
    );
    // Non-canonical spellings are refused.
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        FleetArtifact::decode(&trailing),
        Err(ArtifactError::Decode(DecodeError::TrailingBytes {
            left: 1,
            ..
        }))
    ));
    let mut unsorted = a.clone();
    unsorted.replicas.swap(0, 1);
    assert!(matches!(
        unsorted.encode(),
        Err(ArtifactError::Rule(ArtifactRule::ReplicaIds))
    ));
    for cut in 0..bytes.len() {
        assert!(
            matches!(
                FleetArtifact::decode(&bytes[..cut]),
                Err(ArtifactError::Decode(DecodeError::Truncated { .. }))
            ),
            "cut at {cut}"
        );
    }
    let mut other = bytes.clone();
    other[0] ^= 1;
    assert!(matches!(
        FleetArtifact::decode(&other),
        Err(ArtifactError::NotAnArtifact)
    ));
    let mut newer = bytes.clone();
    newer[25] = 2;
    assert!(matches!(
        FleetArtifact::decode(&newer),
        Err(ArtifactError::Decode(DecodeError::Version {
            found: 2,
            expected: 1,
            ..
        }))
    ));
    // A decoded artifact breaking a rule: epoch 0 (bytes 40..48 after the
    // magic, version and 14-byte fleet id).
    let mut zero = bytes.clone();
    zero[40..48].copy_from_slice(&0u64.to_be_bytes());
    assert!(matches!(
        FleetArtifact::decode(&zero),
        Err(ArtifactError::Rule(ArtifactRule::EpochZero))
    ));
}

struct World {
    hsm: SoftHsm,
    witness: Witness<SoftHsm>,
    operator_key: [u8; 32],
    _dir: tempfile::TempDir,
}

fn world() -> World {
    world_with_seed(77)
}

fn world_with_seed(seed: u64) -> World {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::from_seed(seed);
    let keys = vec![
        WitnessKeySpec {
            name: "witness-2026".into(),
            not_before: 0,
        },
        WitnessKeySpec {
            name: "witness-2027".into(),
            not_before: T0 + 200 * DAY,
        },
    ];
    let witness = Witness::open(hsm.clone(), keys, dir.path().join("witness.state")).unwrap();
    let op = hsm.key("operator/countersign", KeyKind::Signing).unwrap();
    let operator_key = hsm.public_key(op).unwrap();
    World {
        hsm,
        witness,
        operator_key,
        _dir: dir,
    }
}

impl World {
    fn publish(&mut self, a: &FleetArtifact, at: u64) -> Bundle {
        let w = self
            .witness
            .sign(NS, a.epoch, a.digest().unwrap(), at)
            .unwrap();
        let cs = countersign(&self.hsm, "operator/countersign", &w).unwrap();
        self.bundle(a, &w, cs, at)
    }

    fn bundle(
        &self,
        a: &FleetArtifact,
        w: &vaultfleet_audit::Witnessed,
        cs: [u8; 64],
        at: u64,
    ) -> Bundle {
        let tree = self.witness.tree(NS).unwrap();
        let proof = tree.inclusion_proof(w.leaf_index, tree.size()).unwrap();
        let cp = self.witness.checkpoint(NS, at).unwrap();
        Bundle::assemble(a.encode().unwrap(), w, cs, proof, &cp)
    }

    fn verifier(&self) -> FleetVerifier {
        let keys = self
            .witness
            .keys()
            .iter()
            .map(|k| WitnessKey {
                name: k.name.clone(),
                public_key: self.witness.public_key(&k.name).unwrap(),
                not_before: k.not_before,
            })
            .collect();
        FleetVerifier::new(NS, keys, self.operator_key)
    }
}

#[test]
fn a_good_bundle_is_accepted_and_rotation_moves_forward_never_back() {
    let mut w = world();
    let e1 = w.publish(&artifact(1, 0), T0);
    let e2 = w.publish(&artifact(2, 9), T0 + DAY);
    let e3 = w.publish(&artifact(3, 20), T0 + 2 * DAY);
    let mut v = w.verifier();
    assert_eq!(
        v.verify(&e1.encode().unwrap(), T0 + 10, 3).unwrap().epoch,
        1
    );
    assert_eq!(
        v.verify(&e2.encode().unwrap(), T0 + DAY, 1).unwrap().epoch,
        2
    );
    // The previous fleet still serves during the rotation.
    assert_eq!(
        v.verify(&e1.encode().unwrap(), T0 + DAY, 1).unwrap().epoch,
        1
    );
    assert_eq!(
        v.verify(&e3.encode().unwrap(), T0 + 3 * DAY, 1)
            .unwrap()
            .epoch,
        3
    );
    // Two epochs back: a replay.
    assert!(matches!(
        v.verify(&e1.encode().unwrap(), T0 + 3 * DAY, 1),
        Err(BundleError::EpochRollback { got: 1, newest: 3 })
    ));
    assert_eq!(v.newest_epoch(), Some(3));
}

#[test]
fn every_broken_link_has_its_own_error() {
    let mut w = world();
    let a = artifact(1, 0);
    let good = w.publish(&a, T0);
    let mut v = w.verifier();
    let check = |v: &mut FleetVerifier, b: &Bundle, replica: u64, now: u64| {
        v.verify(&b.encode().unwrap(), now, replica)
    };

    let mut b = good.clone();
    b.witness_signature[0] ^= 1;
    assert!(
        matches!(check(&mut v, &b, 1, T0), Err(BundleError::WitnessSignature)),
        "forged witness signature"
    );

    let mut b = good.clone();
    b.countersignature[10] ^= 1;
    assert!(
        matches!(check(&mut v, &b, 1, T0), Err(BundleError::Countersignature)),
        "forged countersignature"
    );

    // The operator countersigned another witness signature (another epoch's).
    let other = w
        .witness
        .sign(NS, 2, artifact(2, 5).digest().unwrap(), T0 + 1)
        .unwrap();
    let mut b = good.clone();
    b.countersignature = countersign(&w.hsm, "operator/countersign", &other).unwrap();
    assert!(
        matches!(check(&mut v, &b, 1, T0), Err(BundleError::Countersignature)),
        "countersignature over another witness signature"
    );

    let mut b = good.clone();
    b.artifact = artifact(1, 1).encode().unwrap();
    assert!(
        matches!(check(&mut v, &b, 1, T0), Err(BundleError::DigestMismatch)),
        "digest mismatch"
    );

    let mut b = good.clone();
    b.leaf_index += 1;
    assert!(
        matches!(
            check(&mut v, &b, 1, T0),
            Err(BundleError::Inclusion(ProofError::IndexBeyondSize {
                index: 1,
                size: 1
            }))
        ),
        "wrong inclusion proof"
    );
    let mut b = good.clone();
    b.inclusion.push([0; 32]);
    assert!(matches!(
        check(&mut v, &b, 1, T0),
        Err(BundleError::Inclusion(ProofError::Length { got: 1, .. }))
    ));

    assert!(
        matches!(
            check(&mut v, &good, 9, T0),
            Err(BundleError::ReplicaNotInBundle(9))
        ),
        "replica not in the bundle"
    );
    assert!(
        matches!(
            check(&mut v, &good, 1, T0 + 400 * DAY),
            Err(BundleError::Expired { .. })
        ),
        "expired"
    );
    assert!(
        matches!(
            check(&mut v, &good, 1, T0 - 1),
            Err(BundleError::Expired { .. })
        ),
        "not yet valid"
    );

    // A witness key used before its not_before.
    let early = w.witness.keys()[1].clone();
    let mut b = good.clone();
    b.witness_key = early.name.clone();
    assert!(matches!(
        check(&mut v, &b, 1, T0),
        Err(BundleError::WitnessKeyNotYetValid { .. })
    ));

    let mut b = good.clone();
    b.namespace = "another.log".into();
    assert!(matches!(
        check(&mut v, &b, 1, T0),
        Err(BundleError::Namespace { .. })
    ));

    assert!(matches!(
        v.verify(b"garbage", T0, 1),
        Err(BundleError::Malformed(DecodeError::Truncated {
            what: "bundle magic",
            ..
        }))
    ));
    assert!(matches!(
        v.verify(&[b'x'; 64], T0, 1),
        Err(BundleError::NotABundle)
    ));
    let enc = good.encode().unwrap();
    for cut in (0..enc.len()).step_by(7) {
        assert!(matches!(
            v.verify(&enc[..cut], T0, 1),
            Err(BundleError::Malformed(DecodeError::Truncated { .. }))
        ));
    }
    let mut b = good.clone();
    b.artifact[0] ^= 1;
    assert!(matches!(
        check(&mut v, &b, 1, T0),
        Err(BundleError::Artifact(ArtifactError::NotAnArtifact))
    ));
    let mut b = good.clone();
    b.checkpoint = "not a note".into();
    assert!(matches!(
        check(&mut v, &b, 1, T0),
        Err(BundleError::Checkpoint(
            vaultfleet_audit::NoteError::Malformed(_)
        ))
    ));
    // A checkpoint of another log, signed by the pinned witness key.
    let mut b = good.clone();
    b.checkpoint = w.witness.checkpoint("another.log", T0).unwrap().encode();
    assert!(matches!(
        check(&mut v, &b, 1, T0),
        Err(BundleError::CheckpointOrigin { got, .. }) if got == "another.log"
    ));
    // A checkpoint signed by a key the client does not pin.
    let stranger = world_with_seed(78);
    let mut b = good.clone();
    b.checkpoint = stranger.witness.checkpoint(NS, T0).unwrap().encode();
    assert!(matches!(
        check(&mut v, &b, 1, T0),
        Err(BundleError::CheckpointUnsigned)
    ));
    // And the untouched bundle passes.
    assert_eq!(check(&mut v, &good, 1, T0).unwrap().epoch, 1);
}

#[test]
fn the_witness_enforces_its_rules_and_keeps_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let hsm = SoftHsm::from_seed(5);
    let keys = vec![WitnessKeySpec {
        name: "w".into(),
        not_before: 0,
    }];
    let mut w = Witness::open(hsm.clone(), keys.clone(), &path).unwrap();
    let d1 = artifact(1, 0).digest().unwrap();
    let d2 = artifact(2, 1).digest().unwrap();
    assert!(matches!(
        w.sign(NS, 2, d1, T0),
        Err(WitnessError::EpochOutOfOrder { want: 1, .. })
    ));
    w.sign(NS, 1, d1, T0).unwrap();
    assert!(
        matches!(
            w.sign(NS, 1, d2, T0),
            Err(WitnessError::EpochSigned { epoch: 1, .. })
        ),
        "a second digest for a signed epoch"
    );
    assert!(matches!(
        w.sign(NS, 2, d1, T0),
        Err(WitnessError::DigestReused { epoch: 1, .. })
    ));
    assert!(matches!(
        w.sign(NS, 3, d2, T0),
        Err(WitnessError::EpochOutOfOrder { want: 2, .. })
    ));
    drop(w);
    let mut w = Witness::open(hsm, keys, &path).unwrap();
    assert!(
        matches!(w.sign(NS, 1, d2, T0), Err(WitnessError::EpochSigned { .. })),
        "the rules survive a restart"
    );
    w.sign(NS, 2, d2, T0 + 1).unwrap();
    assert_eq!(w.entries(NS).len(), 2);
}

#[test]
fn a_log_that_equivocates_fails_the_consistency_check() {
    // An honest log, and a fork of it that rewrote epoch 2 (as a witness whose
    // state was rolled back would have to).
    let mut honest = world();
    let mut forked = world();
    honest.publish(&artifact(1, 0), T0);
    forked.publish(&artifact(1, 0), T0);
    honest.publish(&artifact(2, 1), T0 + 1);
    forked.publish(&artifact(2, 2), T0 + 1);
    honest.publish(&artifact(3, 3), T0 + 2);
    let old = Checkpoint::parse(
        &SignedNote::parse(&forked.witness.checkpoint(NS, T0 + 2).unwrap().encode())
            .unwrap()
            .text,
    )
    .unwrap();
    let tree = honest.witness.tree(NS).unwrap();
    let new = tree.root();
    let proof = tree.consistency_proof(old.size, tree.size()).unwrap();
    assert!(verify_consistency(old.size, tree.size(), &proof, &old.root, &new).is_err());
    // While the honest history is consistent with itself.
    let honest_old = tree.root_at(2).unwrap();
    let p = tree.consistency_proof(2, 3).unwrap();
    assert!(verify_consistency(2, 3, &p, &honest_old, &new).is_ok());
}

#[test]
fn the_newest_epoch_survives_a_client_restart() {
    let mut w = world();
    let e1 = w.publish(&artifact(1, 0), T0);
    let e2 = w.publish(&artifact(2, 1), T0 + 1);
    let e3 = w.publish(&artifact(3, 2), T0 + 2);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("newest");
    let mut v = w.verifier().persist_to(&state).unwrap();
    v.verify(&e3.encode().unwrap(), T0 + 2, 1).unwrap();
    let mut v = w.verifier().persist_to(&state).unwrap();
    assert_eq!(v.newest_epoch(), Some(3));
    assert!(matches!(
        v.verify(&e1.encode().unwrap(), T0 + 2, 1),
        Err(BundleError::EpochRollback { .. })
    ));
    assert_eq!(
        v.verify(&e2.encode().unwrap(), T0 + 2, 1).unwrap().epoch,
        2,
        "the previous epoch still serves"
    );
}

#[cfg(feature = "pkcs11")]
#[test]
fn the_operator_countersigns_with_a_key_held_by_softhsm2() {
    let dir = tempfile::tempdir().unwrap();
    let operator = vaultfleet::hsm::softhsm2_throwaway_token(dir.path(), "operator", "1234")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut w = world();
    let a = artifact(1, 0);
    let witnessed = w.witness.sign(NS, 1, a.digest().unwrap(), T0).unwrap();
    let cs = countersign(&operator, "operator/countersign", &witnessed).unwrap();
    let op_key = operator
        .public_key(
            operator
                .key("operator/countersign", KeyKind::Signing)
                .unwrap(),
        )
        .unwrap();
    let bundle = w.bundle(&a, &witnessed, cs, T0);
    let mut v = w.verifier();
    assert!(
        matches!(
            v.verify(&bundle.encode().unwrap(), T0, 1),
            Err(BundleError::Countersignature)
        ),
        "the soft operator key is not the token's"
    );
    w.operator_key = op_key;
    let mut v = w.verifier();
    assert_eq!(v.verify(&bundle.encode().unwrap(), T0, 1).unwrap().epoch, 1);
}

#[test]
fn a_retired_witness_key_and_a_forked_log_are_refused() {
    // witness-2026 retires when witness-2027 starts (T0 + 200 days).
    let mut w = world();
    let a = artifact(1, 0);
    let late = T0 + 300 * DAY;
    let witnessed = w.witness.sign(NS, 1, a.digest().unwrap(), late).unwrap();
    assert_eq!(
        witnessed.key, "witness-2027",
        "the witness signs with the current key"
    );
    let mut v = w.verifier();
    let mut forged = w.bundle(
        &a,
        &witnessed,
        countersign(&w.hsm, "operator/countersign", &witnessed).unwrap(),
        late,
    );
    // Re-sign the same statement with the retired key, as a thief of it would.
    let old_key = w.hsm.key("witness/witness-2026", KeyKind::Signing).unwrap();
    let statement = vaultfleet_audit::Statement {
        namespace: NS.into(),
        timestamp: late,
        epoch: 1,
        digest: a.digest().unwrap(),
    };
    forged.witness_key = "witness-2026".into();
    forged.witness_signature = w
        .hsm
        .sign(old_key, &statement.signed_bytes().unwrap())
        .unwrap();
    assert!(matches!(
        v.verify(&forged.encode().unwrap(), late, 1),
        Err(BundleError::WitnessKeyRetired { .. })
    ));

    // Two witnesses with the same keys that diverge at epoch 1: the verifier
    // that saw one log's checkpoint refuses the other's at the same size.
    let mut honest = world();
    let mut fork = world();
    let b1 = honest.publish(&artifact(1, 0), T0);
    let f1 = fork.publish(&artifact(1, 9), T0);
    let mut v = honest.verifier();
    v.verify(&b1.encode().unwrap(), T0, 1).unwrap();
    // The second root for size 1 is caught before the epoch's second digest.
    assert!(matches!(
        v.verify(&f1.encode().unwrap(), T0, 1),
        Err(BundleError::ForkedLog { size: 1 })
    ));
}

#[test]
fn an_accepted_bundle_seen_again_still_faces_the_time_and_replica_checks() {
    let mut w = world();
    let good = w.publish(&artifact(1, 0), T0).encode().unwrap();
    let mut v = w.verifier();
    v.verify(&good, T0, 1).unwrap();
    // The same bytes again: signatures are not re-checked, the rest is.
    assert!(matches!(
        v.verify(&good, T0 + 400 * DAY, 1),
        Err(BundleError::Expired { .. })
    ));
    assert!(matches!(
        v.verify(&good, T0, 9),
        Err(BundleError::ReplicaNotInBundle(9))
    ));
    assert_eq!(v.verify(&good, T0, 2).unwrap().epoch, 1);
}

#[test]
fn the_witness_names_what_it_refuses_and_what_is_wrong_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let hsm = SoftHsm::from_seed(6);
    let keys = vec![WitnessKeySpec {
        name: "w".into(),
        not_before: 0,
    }];
    assert!(matches!(
        Witness::open(hsm.clone(), vec![], &path),
        Err(WitnessError::InvalidKeys)
    ));
    let mut w = Witness::open(hsm.clone(), keys.clone(), &path).unwrap();
    assert!(
        matches!(
            Witness::open(hsm.clone(), keys.clone(), &path),
            Err(WitnessError::Locked { .. })
        ),
        "a second witness on the same state"
    );
    let d1 = artifact(1, 0).digest().unwrap();
    let d2 = artifact(2, 1).digest().unwrap();
    assert!(matches!(
        w.sign("bad namespace", 1, d1, T0),
        Err(WitnessError::InvalidNamespace(ns)) if ns == "bad namespace"
    ));
    w.sign(NS, 1, d1, T0).unwrap();
    assert!(matches!(
        w.sign(NS, 2, d2, T0 - 1),
        Err(WitnessError::TimeWentBack { timestamp, last: T0, .. }) if timestamp == T0 - 1
    ));
    drop(w);

    // A state file edited by hand: a line cut short, then a line whose
    // signature is another one's.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}{NS} 2\n")).unwrap();
    assert!(matches!(
        Witness::open(hsm.clone(), keys.clone(), &path),
        Err(WitnessError::Log {
            source: LogError::Malformed { line: 2 },
            ..
        })
    ));
    let forged = text.replacen(
        &format!("{NS} 1 "),
        &format!("{NS} 1 {} ", "00".repeat(32)),
        1,
    );
    let forged = forged.replacen(&format!(" {} ", hex(&d1)), " ", 1);
    std::fs::write(&path, &forged).unwrap();
    assert!(matches!(
        Witness::open(hsm.clone(), keys.clone(), &path),
        Err(WitnessError::LogNotSigned { line: 1, .. })
    ));
    std::fs::write(&path, format!("{text}{text}")).unwrap();
    assert!(matches!(
        Witness::open(hsm, keys, &path),
        Err(WitnessError::LogBreaksRules { line: 2, source, .. })
            if matches!(*source, WitnessError::DigestReused { epoch: 1, .. })
    ));
}

#[test]
fn an_unreadable_verifier_state_is_refused_by_line() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("newest");
    std::fs::write(&state, format!("current 1 {}\nnonsense\n", "ab".repeat(32))).unwrap();
    assert!(matches!(
        w.verifier().persist_to(&state),
        Err(BundleError::StateUnreadable { line: 2, .. })
    ));
    assert!(matches!(
        w.verifier().persist_to(dir.path()),
        Err(BundleError::State { source, .. }) if source.kind() != std::io::ErrorKind::NotFound
    ));
}
