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
    Bundle, BundleError, Checkpoint, ConsistencyProof, EpochRetirement, FleetVerifier, LogError,
    ProofError, SignedNote, Witness, WitnessError, WitnessKey, WitnessKeySpec,
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
    assert_eq!(
        verify_consistency(old.size, tree.size(), &proof, &old.root, &new),
        Err(ProofError::RootMismatch)
    );
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

/// witness-2026 retires when witness-2027 starts.
const RETIRED: u64 = T0 + 200 * DAY;

impl World {
    /// A countersigned bundle of `a` witnessed at `signed_at`, with a checkpoint
    /// signed by the key valid at `checkpoint_at`.
    fn publish_with_checkpoint(
        &mut self,
        a: &FleetArtifact,
        signed_at: u64,
        checkpoint_at: u64,
    ) -> Vec<u8> {
        let w = self
            .witness
            .sign(NS, a.epoch, a.digest().unwrap(), signed_at)
            .unwrap();
        let cs = countersign(&self.hsm, "operator/countersign", &w).unwrap();
        self.bundle(a, &w, cs, checkpoint_at).encode().unwrap()
    }

    fn proof(&self, a: u64, b: u64) -> Vec<u8> {
        self.witness
            .consistency_proof(NS, a, b)
            .unwrap()
            .encode()
            .unwrap()
    }

    fn retirement(&self, through: u64, at: u64) -> Vec<u8> {
        let mut r = self.witness.sign_retirement(NS, through, at).unwrap();
        r.countersign(&self.hsm, "operator/countersign").unwrap();
        r.encode().unwrap()
    }
}

#[test]
fn finding_4_a_backdated_statement_of_a_retired_witness_key_is_refused_at_the_verifiers_time() {
    // A thief of witness-2026 (and of nothing current) keeps its own log: it
    // signs epochs dated before the key retired, checkpoints them with the same
    // key, and has the operator countersign (or replays its countersignatures).
    let mut thief = world();
    let _e1 = thief.publish_with_checkpoint(&artifact(1, 0), T0, T0);
    let e2 = thief.publish_with_checkpoint(&artifact(2, 66), T0 + 100 * DAY, T0 + 100 * DAY);
    let now = T0 + 300 * DAY;
    assert!(
        matches!(
            w_verify(&thief, &e2, now),
            Err(BundleError::WitnessKeyRetiredAt { key, retired: RETIRED, now: n })
                if key == "witness-2026" && n == now
        ),
        "a statement dated before retirement, seen after it"
    );
    // Before the successor starts the same bundle is good: it is the time.
    assert_eq!(w_verify(&thief, &e2, RETIRED - 1).unwrap().epoch, 2);

    // A genuine statement of the old key, checkpointed by the current key: the
    // statement's key alone is refused.
    let mut w = world();
    let b = w.publish_with_checkpoint(&artifact(1, 0), T0, now);
    assert!(matches!(
        w_verify(&w, &b, now),
        Err(BundleError::WitnessKeyRetiredAt { key, .. }) if key == "witness-2026"
    ));

    // Bytes accepted before the retirement face it when seen again after it.
    let mut w = world();
    let b = w.publish_with_checkpoint(&artifact(1, 0), T0, T0);
    let mut v = w.verifier();
    v.verify(&b, RETIRED - 1, 1).unwrap();
    assert!(matches!(
        v.verify(&b, RETIRED, 1),
        Err(BundleError::WitnessKeyRetiredAt {
            retired: RETIRED,
            ..
        })
    ));
}

fn w_verify(w: &World, bundle: &[u8], now: u64) -> Result<FleetArtifact, BundleError> {
    w.verifier().verify(bundle, now, 1)
}

#[test]
fn finding_4_a_witness_key_may_not_sign_before_the_verifiers_time_reaches_it() {
    // Dated after witness-2027's not_before, seen before it (checkpointed by the
    // current key, so only the statement's key is out of its window).
    let mut w = world();
    let b = w.publish_with_checkpoint(&artifact(1, 0), T0 + 250 * DAY, T0);
    let now = T0 + 100 * DAY;
    assert!(matches!(
        w_verify(&w, &b, now),
        Err(BundleError::WitnessKeyNotYetValidAt { key, not_before: RETIRED, now: n })
            if key == "witness-2027" && n == now
    ));
    // Once its time comes, the statement holds (with a checkpoint by the key
    // current then).
    let witnessed = w.witness.entries(NS)[0].clone();
    let cs = countersign(&w.hsm, "operator/countersign", &witnessed).unwrap();
    let b = w.bundle(&artifact(1, 0), &witnessed, cs, RETIRED);
    assert_eq!(
        w_verify(&w, &b.encode().unwrap(), RETIRED).unwrap().epoch,
        1
    );
}

#[test]
fn finding_4_a_checkpoint_signed_by_a_key_outside_its_window_is_refused() {
    // The statement by the current key, the checkpoint only by the retired one.
    let mut w = world();
    let b = w.publish_with_checkpoint(&artifact(1, 0), T0 + 250 * DAY, T0);
    let now = T0 + 300 * DAY;
    assert!(matches!(
        w_verify(&w, &b, now),
        Err(BundleError::CheckpointKeyNotCurrent { key, not_before: 0, retired: Some(RETIRED), now: n })
            if key == "witness-2026" && n == now
    ));
    // The checkpoint by a key that starts in the verifier's future.
    let mut w = world();
    let b = w.publish_with_checkpoint(&artifact(1, 0), T0, T0 + 250 * DAY);
    assert!(matches!(
        w_verify(&w, &b, T0 + DAY),
        Err(BundleError::CheckpointKeyNotCurrent { key, not_before: RETIRED, retired: None, .. })
            if key == "witness-2027"
    ));
    assert_eq!(w_verify(&w, &b, RETIRED - 1).unwrap_err().to_string(), {
        format!("the checkpoint is signed by witness key \"witness-2027\", valid in [{RETIRED}, -), not at {}", RETIRED - 1)
    });
}

/// An honest witness at epochs 1 and 2 and a copy of it rolled back to epoch 1
/// that then signed another epoch 2 and an epoch 3: the fork exists at every
/// size above 1.
fn honest_and_rolled_back() -> (World, World, [Vec<u8>; 2], Vec<u8>) {
    let mut honest = world();
    let mut forked = world();
    let e1 = honest.publish(&artifact(1, 0), T0).encode().unwrap();
    forked.publish(&artifact(1, 0), T0);
    let e2 = honest.publish(&artifact(2, 1), T0 + 1).encode().unwrap();
    forked.publish(&artifact(2, 2), T0 + 1);
    let f3 = forked.publish(&artifact(3, 3), T0 + 2).encode().unwrap();
    (honest, forked, [e1, e2], f3)
}

#[test]
fn finding_5_a_checkpoint_that_does_not_extend_the_last_accepted_one_is_refused() {
    let (mut honest, forked, [e1, e2], f3) = honest_and_rolled_back();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("verifier");
    let mut v = honest
        .verifier()
        .require_consistency_proofs()
        .persist_to(&state)
        .unwrap();
    assert_eq!(v.last_checkpoint_size(), None);
    v.verify(&e1, T0 + 2, 1).unwrap();
    assert_eq!(v.last_checkpoint_size(), Some(1));
    let p12 = honest.proof(1, 2);
    v.verify_with_proof(&e2, Some(&p12), T0 + 2, 1).unwrap();
    assert_eq!(v.last_checkpoint_size(), Some(2));
    // The forked log's epoch 3, with the forked witness's own (internally
    // valid) proof from the size the client knows: not an extension. A
    // restarted client knows it too.
    let mut v = honest
        .verifier()
        .require_consistency_proofs()
        .persist_to(&state)
        .unwrap();
    let fp23 = forked.proof(2, 3);
    assert!(matches!(
        v.verify_with_proof(&f3, Some(&fp23), T0 + 2, 1),
        Err(BundleError::NotAnExtension {
            from: 2,
            to: 3,
            source: ProofError::RootMismatch
        })
    ));
    // The honest epoch 3 extends it.
    let e3 = honest.publish(&artifact(3, 4), T0 + 3).encode().unwrap();
    let p23 = honest.proof(2, 3);
    assert_eq!(
        v.verify_with_proof(&e3, Some(&p23), T0 + 3, 1)
            .unwrap()
            .epoch,
        3
    );
    assert_eq!(v.last_checkpoint_size(), Some(3));
    // A replica still on epoch 2 serves an older checkpoint: proven a prefix of
    // the newest, accepted, and the newest stays.
    assert_eq!(
        v.verify_with_proof(&e2, Some(&p23), T0 + 3, 1)
            .unwrap()
            .epoch,
        2
    );
    assert_eq!(v.last_checkpoint_size(), Some(3));
}

#[test]
fn finding_5_each_missing_or_wrong_consistency_proof_has_its_own_error() {
    let (honest, _forked, [e1, e2], _) = honest_and_rolled_back();
    let mut v = honest.verifier().require_consistency_proofs();
    v.verify(&e1, T0 + 2, 1).unwrap();
    assert!(matches!(
        v.verify(&e2, T0 + 2, 1),
        Err(BundleError::NoConsistencyProof { from: 1, to: 2 })
    ));
    assert!(matches!(
        v.verify_with_proof(&e2, Some(b"garbage"), T0 + 2, 1),
        Err(BundleError::ConsistencyProofMalformed(_))
    ));
    let p02 = honest.proof(0, 2);
    assert!(matches!(
        v.verify_with_proof(&e2, Some(&p02), T0 + 2, 1),
        Err(BundleError::ConsistencyProofSizes {
            got_from: 0,
            got_to: 2,
            from: 1,
            to: 2
        })
    ));
    let mut p12 = honest.witness.consistency_proof(NS, 1, 2).unwrap();
    p12.hashes[0][0] ^= 1;
    assert!(matches!(
        v.verify_with_proof(&e2, Some(&p12.encode().unwrap()), T0 + 2, 1),
        Err(BundleError::NotAnExtension {
            from: 1,
            to: 2,
            source: ProofError::RootMismatch
        })
    ));
    // A verifier not yet requiring proofs (the vault's replies carry none yet)
    // takes a new size as it comes.
    let mut lenient = honest.verifier();
    lenient.verify(&e1, T0 + 2, 1).unwrap();
    assert_eq!(lenient.verify(&e2, T0 + 2, 1).unwrap().epoch, 2);
    // The proof's wire form round-trips.
    let p = honest.witness.consistency_proof(NS, 2, 1).unwrap();
    assert_eq!((p.from_size, p.to_size), (1, 2));
    assert_eq!(ConsistencyProof::decode(&p.encode().unwrap()).unwrap(), p);
}

#[test]
fn finding_5_a_check_made_against_an_older_newest_checkpoint_is_not_accepted() {
    let (mut honest, _forked, [e1, e2], _) = honest_and_rolled_back();
    let e3 = honest.publish(&artifact(3, 4), T0 + 3).encode().unwrap();
    let mut v = honest.verifier().require_consistency_proofs();
    v.verify(&e1, T0 + 3, 1).unwrap();
    // Two replies checked while the newest checkpoint is size 1, accepted in
    // turn: the second was proven against a checkpoint no longer the newest.
    let a2 = v
        .check_with_proof(&e2, Some(&honest.proof(1, 2)), T0 + 3, 1)
        .unwrap();
    let a3 = v
        .check_with_proof(&e3, Some(&honest.proof(1, 3)), T0 + 3, 1)
        .unwrap();
    v.accept(&a3).unwrap();
    assert!(matches!(
        v.accept(&a2),
        Err(BundleError::StaleCheck {
            checked_against: Some(1),
            newest: 3
        })
    ));
    assert_eq!(v.newest_epoch(), Some(3));
}

#[test]
fn finding_low_an_epoch_retired_early_is_refused_before_its_not_after() {
    let mut w = world();
    let e1 = w.publish(&artifact(1, 0), T0).encode().unwrap();
    let e2 = w.publish(&artifact(2, 1), T0 + 1).encode().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("verifier");
    let mut v = w.verifier().persist_to(&state).unwrap();
    v.verify(&e2, T0 + 2, 1).unwrap();
    assert_eq!(
        v.verify(&e1, T0 + 2, 1).unwrap().epoch,
        1,
        "the previous epoch serves until it is retired"
    );
    let retirement = w.retirement(1, T0 + 2);
    assert_eq!(v.retire(&retirement, T0 + 2).unwrap(), 1);
    assert_eq!(v.retired_through(), Some(1));
    assert!(matches!(
        v.verify(&e1, T0 + 2, 1),
        Err(BundleError::EpochRetired {
            epoch: 1,
            retired_through: 1
        })
    ));
    assert_eq!(v.verify(&e2, T0 + 2, 1).unwrap().epoch, 2);
    // Across a restart, too.
    let mut v = w.verifier().persist_to(&state).unwrap();
    assert_eq!(v.retired_through(), Some(1));
    assert!(matches!(
        v.verify(&e1, T0 + 2, 1),
        Err(BundleError::EpochRetired { epoch: 1, .. })
    ));
}

#[test]
fn finding_low_an_epoch_retirement_must_be_witnessed_and_countersigned() {
    let mut w = world();
    w.publish(&artifact(1, 0), T0);
    let good = EpochRetirement::decode(&w.retirement(1, T0 + 1)).unwrap();
    let mut v = w.verifier();
    let refuse =
        |v: &mut FleetVerifier, r: &EpochRetirement| v.retire(&r.encode().unwrap(), T0 + 1);

    let mut r = good.clone();
    r.countersignature = [0; 64];
    assert!(
        matches!(refuse(&mut v, &r), Err(BundleError::Countersignature)),
        "no operator"
    );
    let mut r = good.clone();
    r.witness_signature[3] ^= 1;
    assert!(
        matches!(refuse(&mut v, &r), Err(BundleError::WitnessSignature)),
        "forged witness"
    );
    let mut r = good.clone();
    r.retired_through = 5;
    assert!(
        matches!(refuse(&mut v, &r), Err(BundleError::WitnessSignature)),
        "edited epoch"
    );
    let mut r = good.clone();
    r.namespace = "another.log".into();
    assert!(matches!(
        refuse(&mut v, &r),
        Err(BundleError::Namespace { .. })
    ));
    let mut r = good.clone();
    r.witness_key = "stranger".into();
    assert!(
        matches!(refuse(&mut v, &r), Err(BundleError::UnknownWitnessKey(k)) if k == "stranger")
    );
    // A countersignature of a fleet statement is not one of a retirement.
    let witnessed = &w.witness.entries(NS)[0];
    let mut r = good.clone();
    r.countersignature = countersign(&w.hsm, "operator/countersign", witnessed).unwrap();
    assert!(matches!(
        refuse(&mut v, &r),
        Err(BundleError::Countersignature)
    ));
    // The retirement's witness key is held to its window at the verifier's time.
    assert!(matches!(
        v.retire(&good.encode().unwrap(), RETIRED),
        Err(BundleError::WitnessKeyRetiredAt { .. })
    ));
    assert!(matches!(
        v.retire(b"vaultfleet/epoch-retirement", T0 + 1),
        Err(BundleError::RetirementMalformed(
            DecodeError::Truncated { .. }
        ))
    ));
    assert_eq!(
        v.retired_through(),
        None,
        "nothing refused moved the verifier"
    );
    assert_eq!(refuse(&mut v, &good).unwrap(), 1);
    // The witness retires only epochs it signed.
    assert!(matches!(
        w.witness.sign_retirement(NS, 2, T0 + 1),
        Err(WitnessError::RetiresUnsignedEpoch {
            retired_through: 2,
            last: 1,
            ..
        })
    ));
    assert!(matches!(
        w.witness.sign_retirement(NS, 0, T0 + 1),
        Err(WitnessError::RetiresUnsignedEpoch {
            retired_through: 0,
            ..
        })
    ));
    assert!(matches!(
        w.witness.sign_retirement(NS, 1, T0 - 1),
        Err(WitnessError::TimeWentBack { .. })
    ));
}

#[test]
fn a_retirement_with_any_byte_changed_is_refused() {
    let mut w = world();
    w.publish(&artifact(1, 0), T0);
    w.publish(&artifact(2, 1), T0 + 1);
    let good = w.retirement(1, T0 + 1);
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let mut v = w.verifier();
        assert!(v.retire(&bad, T0 + 1).is_err(), "byte {i} changed");
        assert_eq!(v.retired_through(), None, "byte {i} changed");
    }
    assert_eq!(w.verifier().retire(&good, T0 + 1).unwrap(), 1);
}

// ---- Mutation tests (issue 13): each kills a cargo-mutants survivor. ----

/// A bundle of `forked`'s entry `index` (its epoch `index + 1`, artifact `a`)
/// with a checkpoint of the forked log's current size.
fn forked_bundle(forked: &World, index: usize, a: &FleetArtifact, at: u64) -> Vec<u8> {
    let witnessed = forked.witness.entries(NS)[index].clone();
    let cs = countersign(&forked.hsm, "operator/countersign", &witnessed).unwrap();
    forked.bundle(a, &witnessed, cs, at).encode().unwrap()
}

#[test]
fn mutant_bundle_admit_refuses_a_second_digest_for_the_current_or_previous_epoch() {
    // A rolled-back witness (the same keys) signed other fleets for the epochs
    // the client accepted; its longer log hides the fork from the checkpoint
    // comparison (no consistency proofs required), so only the digest shows it.
    let mut honest = world();
    let mut forked = world();
    let e1 = honest.publish(&artifact(1, 0), T0).encode().unwrap();
    forked.publish(&artifact(1, 5), T0);
    forked.publish(&artifact(2, 6), T0 + 1);
    let f1_at_2 = forked_bundle(&forked, 0, &artifact(1, 5), T0 + 1);
    let mut v = honest.verifier();
    v.verify(&e1, T0 + 1, 1).unwrap();
    assert!(matches!(
        v.verify(&f1_at_2, T0 + 1, 1),
        Err(BundleError::Equivocation(1))
    ));
    // Epoch 1 is the previous one now: still refused.
    let e2 = honest.publish(&artifact(2, 1), T0 + 1).encode().unwrap();
    v.verify(&e2, T0 + 1, 1).unwrap();
    forked.publish(&artifact(3, 7), T0 + 2);
    let f1_at_3 = forked_bundle(&forked, 0, &artifact(1, 5), T0 + 2);
    assert!(matches!(
        v.verify(&f1_at_3, T0 + 2, 1),
        Err(BundleError::Equivocation(1))
    ));
    assert_eq!(v.newest_epoch(), Some(2));
    assert_eq!(v.verify(&e1, T0 + 2, 1).unwrap().epoch, 1);
}

#[test]
fn mutant_bundle_accept_keeps_the_newest_epoch_and_its_predecessor() {
    let mut w = world();
    let e1 = w.publish(&artifact(1, 0), T0).encode().unwrap();
    let e2 = w.publish(&artifact(2, 1), T0 + 1).encode().unwrap();
    let mut v = w.verifier();
    v.verify(&e1, T0 + 1, 1).unwrap();
    v.verify(&e2, T0 + 1, 1).unwrap();
    // The previous epoch served again does not become the newest.
    assert_eq!(v.verify(&e1, T0 + 1, 2).unwrap().epoch, 1);
    assert_eq!(v.newest_epoch(), Some(2));
    // The newest served twice does not push its predecessor out.
    v.verify(&e2, T0 + 1, 2).unwrap();
    v.verify(&e2, T0 + 1, 3).unwrap();
    assert_eq!(v.verify(&e1, T0 + 1, 3).unwrap().epoch, 1);
    assert_eq!(v.newest_epoch(), Some(2));
}

#[test]
fn mutant_bundle_an_artifact_is_refused_from_its_not_after_on() {
    let mut w = world();
    let mut a = artifact(1, 0);
    a.not_after = T0 + 10 * DAY;
    let b = w.publish(&a, T0).encode().unwrap();
    assert_eq!(w_verify(&w, &b, T0).unwrap().epoch, 1);
    assert_eq!(w_verify(&w, &b, T0 + 10 * DAY - 1).unwrap().epoch, 1);
    assert!(matches!(
        w_verify(&w, &b, T0 + 10 * DAY),
        Err(BundleError::Expired { now, .. }) if now == T0 + 10 * DAY
    ));
}

#[test]
fn mutant_bundle_a_statement_is_held_to_its_keys_window_at_its_edges() {
    let mut w = world();
    let good = w.publish(&artifact(1, 0), T0);
    let v = w.verifier();
    let check = |b: &Bundle| v.check(&b.encode().unwrap(), T0, 1);
    // witness-2026 dated the instant witness-2027 starts: retired.
    let mut b = good.clone();
    b.timestamp = RETIRED;
    assert!(matches!(
        check(&b),
        Err(BundleError::WitnessKeyRetired {
            timestamp: RETIRED,
            retired: RETIRED,
            ..
        })
    ));
    // One second earlier its window holds (the edited time breaks the signature).
    b.timestamp = RETIRED - 1;
    assert!(matches!(check(&b), Err(BundleError::WitnessSignature)));
    // witness-2027 from its first instant, and not a second before.
    let mut b = good.clone();
    b.witness_key = "witness-2027".into();
    b.timestamp = RETIRED;
    assert!(matches!(check(&b), Err(BundleError::WitnessSignature)));
    b.timestamp = RETIRED - 1;
    assert!(matches!(
        check(&b),
        Err(BundleError::WitnessKeyNotYetValid {
            not_before: RETIRED,
            ..
        })
    ));
}

#[test]
fn mutant_bundle_a_checkpoint_key_is_retired_from_its_successors_first_instant() {
    // The statement by witness-2027, the checkpoint by witness-2026 (signed
    // before it retired), seen the instant witness-2027 starts.
    let mut w = world();
    let b = w.publish_with_checkpoint(&artifact(1, 0), RETIRED, T0);
    assert!(matches!(
        w_verify(&w, &b, RETIRED),
        Err(BundleError::CheckpointKeyNotCurrent { key, now: RETIRED, .. }) if key == "witness-2026"
    ));
}

#[test]
fn mutant_bundle_verify_reply_takes_only_the_replicas_own_response_key() {
    let hsm = SoftHsm::from_seed(9);
    let mut a = artifact(1, 0);
    let mut handles = Vec::new();
    for r in &mut a.replicas {
        let h = hsm
            .key(&format!("response/{}", r.id), KeyKind::Signing)
            .unwrap();
        r.response_key = hsm.public_key(h).unwrap();
        handles.push(h);
    }
    let signed = b"a vault reply body";
    let by_1 = hsm.sign(handles[0], signed).unwrap();
    assert!(FleetVerifier::verify_reply(&a, 1, signed, &by_1).is_ok());
    assert!(matches!(
        FleetVerifier::verify_reply(&a, 2, signed, &by_1),
        Err(BundleError::ReplySignature(2))
    ));
    assert!(matches!(
        FleetVerifier::verify_reply(&a, 1, b"another body", &by_1),
        Err(BundleError::ReplySignature(1))
    ));
    assert!(matches!(
        FleetVerifier::verify_reply(&a, 9, signed, &by_1),
        Err(BundleError::ReplicaNotInBundle(9))
    ));
}

#[test]
fn mutant_bundle_save_persists_to_a_bare_file_name() {
    // A state path with no directory part: its parent is "", not a directory
    // to sync. (Relative to the test's working directory, removed at the end.)
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let name = format!("mutant-verifier-{}.state", std::process::id());
    let _remove = Remove(name.clone());
    let mut w = world();
    let e1 = w.publish(&artifact(1, 0), T0).encode().unwrap();
    let mut v = w.verifier().persist_to(&name).unwrap();
    v.verify(&e1, T0, 1).unwrap();
    let v = w.verifier().persist_to(&name).unwrap();
    assert_eq!(v.newest_epoch(), Some(1));
}

#[test]
fn mutant_bundle_accept_keeps_exactly_checkpoints_kept_for_the_fork_check() {
    // 65 checkpoints accepted (sizes 1..=65): the newest 64 are kept, so a
    // second root for size 2 is a fork, and one for size 1 is no longer known.
    let mut w = world();
    let mut v = w.verifier();
    for epoch in 1..=65u64 {
        let b = w.publish(&artifact(epoch, epoch as u8), T0 + epoch);
        v.verify(&b.encode().unwrap(), T0 + 100, 1).unwrap();
    }
    assert_eq!(v.last_checkpoint_size(), Some(65));
    // A witness with the same keys, rolled back to nothing, signs another
    // epoch 1 and 2: its checkpoints of sizes 1 and 2 have other roots.
    let mut forked = world();
    let f1 = forked.publish(&artifact(1, 200), T0 + 1);
    let f2 = forked.publish(&artifact(2, 201), T0 + 2);
    assert!(matches!(
        v.verify(&f2.encode().unwrap(), T0 + 100, 1),
        Err(BundleError::ForkedLog { size: 2 })
    ));
    // Size 1 was dropped: only the epoch shows this one is old.
    assert!(matches!(
        v.verify(&f1.encode().unwrap(), T0 + 100, 1),
        Err(BundleError::EpochRollback { got: 1, newest: 65 })
    ));
}

#[test]
fn mutant_witness_load_refuses_a_state_it_cannot_read() {
    // Not found is a new witness; any other read error is not: a witness that
    // started afresh over a state it failed to read could sign an epoch twice.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
    let keys = vec![WitnessKeySpec {
        name: "w".into(),
        not_before: 0,
    }];
    assert!(matches!(
        Witness::open(SoftHsm::from_seed(5), keys, &path),
        Err(WitnessError::State { path: p, .. }) if p == path
    ));
}
