//! k-of-n cosigners in `FleetVerifier`: a bundle's checkpoint note carries
//! C2SP `cosignature/v1` lines (<https://c2sp.org/tlog-cosignature>) by
//! independent witnesses, and a verifier pinned to n of them wants k.

use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::note::{cosign, key_hash, NoteSignature, ALG_COSIGNATURE_V1};
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{
    Bundle, BundleError, CosignerKey, CosignerPinError, FleetVerifier, NoteError, SignedNote,
    Witness, WitnessKey, WitnessKeySpec,
};

const NS: &str = "example.vault.fleet_keys.v1";
const T0: u64 = 1_800_000_000;
const DAY: u64 = 86_400;
/// The cosigners' names (C2SP recommends schema-less URLs).
const A: &str = "witness.example.com/a";
const B: &str = "witness.example.org/b";
const C: &str = "witness.example.net/c";

fn artifact(epoch: u64, seed: u8) -> FleetArtifact {
    FleetArtifact {
        fleet_id: "example-fleet".into(),
        epoch,
        replicas: (1..=3u64)
            .map(|id| ReplicaKeys {
                id,
                datacenter: ["dc-a", "dc-b", "dc-c"][(id as usize - 1) % 3].into(),
                response_key: [seed.wrapping_add(id as u8); 32],
                transport_key: [seed.wrapping_add(0x40 + id as u8); 32],
                opaque_key: [seed.wrapping_add(0x80); 32],
            })
            .collect(),
        voters: vec![1, 2, 3],
        learners: vec![],
        not_before: T0,
        not_after: T0 + 365 * DAY,
    }
}

/// The fleet's witness and operator, and three independent cosigners (with
/// their own HSM).
struct World {
    hsm: SoftHsm,
    witness: Witness<SoftHsm>,
    operator_key: [u8; 32],
    cosigners: SoftHsm,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::from_seed(16);
    let keys = vec![WitnessKeySpec {
        name: "witness-2026".into(),
        not_before: 0,
    }];
    let witness = Witness::open(hsm.clone(), keys, dir.path().join("witness.state")).unwrap();
    let op = hsm.key("operator/countersign", KeyKind::Signing).unwrap();
    let operator_key = hsm.public_key(op).unwrap();
    World {
        hsm,
        witness,
        operator_key,
        cosigners: SoftHsm::from_seed(61),
        _dir: dir,
    }
}

impl World {
    /// A bundle of `a` as the witness publishes it: its checkpoint signed by
    /// the witness only.
    fn publish(&mut self, a: &FleetArtifact, at: u64) -> Bundle {
        let w = self
            .witness
            .sign(NS, a.epoch, a.digest().unwrap(), at)
            .unwrap();
        let cs = countersign(&self.hsm, "operator/countersign", &w).unwrap();
        let tree = self.witness.tree(NS).unwrap();
        let proof = tree.inclusion_proof(w.leaf_index, tree.size()).unwrap();
        let cp = self.witness.checkpoint(NS, at).unwrap();
        Bundle::assemble(a.encode().unwrap(), &w, cs, proof, &cp)
    }

    fn cosigner_public_key(&self, name: &str) -> [u8; 32] {
        let k = self.cosigners.key(name, KeyKind::Signing).unwrap();
        self.cosigners.public_key(k).unwrap()
    }

    fn pin(&self, name: &str) -> CosignerKey {
        CosignerKey {
            name: name.into(),
            public_key: self.cosigner_public_key(name),
        }
    }

    /// `name`'s cosignature of `text` at `timestamp`.
    fn cosignature(&self, name: &str, text: &str, timestamp: u64) -> NoteSignature {
        let k = self.cosigners.key(name, KeyKind::Signing).unwrap();
        cosign(&self.cosigners, k, name, text, timestamp).unwrap()
    }

    fn verifier(&self) -> FleetVerifier {
        let keys = vec![WitnessKey {
            name: "witness-2026".into(),
            public_key: self.witness.public_key("witness-2026").unwrap(),
            not_before: 0,
        }];
        FleetVerifier::new(NS, keys, self.operator_key)
    }

    /// A verifier wanting `need` of A, B and C.
    fn verifier_needing(&self, need: usize) -> FleetVerifier {
        self.verifier()
            .require_cosigners(need, vec![self.pin(A), self.pin(B), self.pin(C)])
            .unwrap()
    }
}

/// `bundle` with `lines` appended to its checkpoint note.
fn with_lines(bundle: &Bundle, lines: Vec<NoteSignature>) -> Vec<u8> {
    let mut note = SignedNote::parse(&bundle.checkpoint).unwrap();
    note.signatures.extend(lines);
    let mut b = bundle.clone();
    b.checkpoint = note.encode();
    b.encode().unwrap()
}

/// The checkpoint note's text (what cosigners sign).
fn text(bundle: &Bundle) -> String {
    SignedNote::parse(&bundle.checkpoint).unwrap().text
}

#[test]
fn two_of_three_cosignatures_pass_with_k_2_and_fail_with_k_3_naming_the_missing_one() {
    let mut w = world();
    let b = w.publish(&artifact(1, 0), T0);
    let t = text(&b);
    let cosigned = with_lines(
        &b,
        vec![w.cosignature(A, &t, T0 + 5), w.cosignature(C, &t, T0 + 6)],
    );
    // The lines are well-formed C2SP cosignatures: name, then base64 of the key
    // ID ("SHA-256(<name> || "\n" || 0x04 || 32-byte Ed25519 cosigner public
    // key)[:4]") and the 8-byte timestamp and 64-byte signature.
    let note = SignedNote::parse(&Bundle::decode(&cosigned).unwrap().checkpoint).unwrap();
    let a_line = note.signatures.iter().find(|s| s.name == A).unwrap();
    assert_eq!(
        a_line.key_hash,
        key_hash(A, ALG_COSIGNATURE_V1, &w.cosigner_public_key(A))
    );
    assert_eq!(a_line.payload.len(), 8 + 64);
    assert_eq!(a_line.payload[..8], (T0 + 5).to_be_bytes());

    let v = w.verifier_needing(2);
    assert_eq!(v.cosigners_required(), 2);
    let accepted = v.check(&cosigned, T0 + 10, 1).unwrap();
    assert_eq!(accepted.cosigners, vec![A.to_string(), C.to_string()]);

    let v = w.verifier_needing(3);
    match v.check(&cosigned, T0 + 10, 1) {
        Err(BundleError::TooFewCosignatures {
            have: 2,
            need: 3,
            missing,
        }) => assert_eq!(missing, vec![B.to_string()]),
        other => panic!("{other:?}"),
    }
    // The witness's checkpoint alone: none of the three.
    match v.check(&b.encode().unwrap(), T0 + 10, 1) {
        Err(BundleError::TooFewCosignatures {
            have: 0,
            need: 3,
            missing,
        }) => assert_eq!(missing, vec![A.to_string(), B.to_string(), C.to_string()]),
        other => panic!("{other:?}"),
    }
    let e = v.check(&cosigned, T0 + 10, 1).unwrap_err().to_string();
    assert!(e.contains("2 of the 3") && e.contains(B), "{e}");
}

#[test]
fn cosignatures_by_unpinned_keys_do_not_count() {
    let mut w = world();
    let b = w.publish(&artifact(1, 0), T0);
    let t = text(&b);
    // "Verifiers MUST ignore signatures from unknown keys, even if they share a
    // name or ID (but not both) with a known key." (C2SP signed-note)
    let stranger = w.cosignature("witness.example.com/stranger", &t, T0 + 1);
    // B's name, another key: another key ID.
    let impostor_key = w.cosigners.key("impostor", KeyKind::Signing).unwrap();
    let impostor = cosign(&w.cosigners, impostor_key, B, &t, T0 + 1).unwrap();
    assert_ne!(
        impostor.key_hash,
        key_hash(B, ALG_COSIGNATURE_V1, &w.cosigner_public_key(B))
    );
    // A's key ID under another name.
    let mut renamed = w.cosignature(A, &t, T0 + 1);
    renamed.name = "witness.example.com/renamed".into();
    let bytes = with_lines(
        &b,
        vec![w.cosignature(A, &t, T0 + 1), stranger, impostor, renamed],
    );
    match w.verifier_needing(2).check(&bytes, T0 + 10, 1) {
        Err(BundleError::TooFewCosignatures {
            have: 1,
            need: 2,
            missing,
        }) => assert_eq!(missing, vec![B.to_string(), C.to_string()]),
        other => panic!("{other:?}"),
    }
    let accepted = w.verifier_needing(1).check(&bytes, T0 + 10, 1).unwrap();
    assert_eq!(accepted.cosigners, vec![A.to_string()]);
}

#[test]
fn the_same_cosigner_twice_counts_once() {
    let mut w = world();
    let b = w.publish(&artifact(1, 0), T0);
    let t = text(&b);
    let first = w.cosignature(A, &t, T0 + 1);
    let bytes = with_lines(&b, vec![first.clone(), w.cosignature(A, &t, T0 + 2), first]);
    match w.verifier_needing(2).check(&bytes, T0 + 10, 1) {
        Err(BundleError::TooFewCosignatures {
            have: 1,
            need: 2,
            missing,
        }) => assert_eq!(missing, vec![B.to_string(), C.to_string()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        w.verifier_needing(1)
            .check(&bytes, T0 + 10, 1)
            .unwrap()
            .cosigners,
        vec![A.to_string()]
    );
}

#[test]
fn a_cosignature_of_another_checkpoint_refuses_the_note() {
    let mut w = world();
    let b = w.publish(&artifact(1, 0), T0);
    let t = text(&b);
    // B cosigned another checkpoint text: the same log with an edited size.
    let edited = t.replacen("\n1\n", "\n2\n", 1);
    assert_ne!(edited, t);
    let bytes = with_lines(
        &b,
        vec![
            w.cosignature(A, &t, T0 + 1),
            w.cosignature(C, &t, T0 + 1),
            w.cosignature(B, &edited, T0 + 1),
        ],
    );
    // It never counts, and as it is a known key's line that does not verify,
    // the whole note is refused: "If the key name and ID match a known key,
    // verifiers MUST verify the signature. If a signature from a known key
    // fails to verify, clients SHOULD reject the whole note." (C2SP signed-note)
    for need in [1, 2, 3] {
        match w.verifier_needing(need).check(&bytes, T0 + 10, 1) {
            Err(BundleError::BadCosignature { cosigner, source }) => {
                assert_eq!(cosigner, B);
                assert!(matches!(source, NoteError::BadSignature(name) if name == B));
            }
            other => panic!("need {need}: {other:?}"),
        }
    }
    // A verifier not pinned to B ignores the line.
    let v = w
        .verifier()
        .require_cosigners(2, vec![w.pin(A), w.pin(C)])
        .unwrap();
    assert_eq!(
        v.check(&bytes, T0 + 10, 1).unwrap().cosigners,
        vec![A.to_string(), C.to_string()]
    );
    // One flipped bit in a valid signature, or a timestamp above 2^63 - 1
    // ("It MUST NOT exceed 2^63 - 1", C2SP tlog-cosignature), likewise.
    let mut flipped = w.cosignature(B, &t, T0 + 1);
    flipped.payload[20] ^= 1;
    let mut huge = w.cosignature(B, &t, T0 + 1);
    huge.payload[..8].copy_from_slice(&(1u64 << 63).to_be_bytes());
    let mut short = w.cosignature(B, &t, T0 + 1);
    short.payload.truncate(8 + 63);
    for bad in [flipped, huge, short] {
        let bytes = with_lines(&b, vec![w.cosignature(A, &t, T0 + 1), bad]);
        assert!(matches!(
            w.verifier_needing(1).check(&bytes, T0 + 10, 1),
            Err(BundleError::BadCosignature { cosigner, .. }) if cosigner == B
        ));
    }
}

#[test]
fn a_cosignature_with_timestamp_zero_does_not_count() {
    let mut w = world();
    let b = w.publish(&artifact(1, 0), T0);
    let t = text(&b);
    // "The cosignature MUST NOT omit the timestamp, i.e. the timestamp MUST NOT
    // be zero." (C2SP tlog-witness)
    let bytes = with_lines(
        &b,
        vec![w.cosignature(A, &t, T0 + 1), w.cosignature(B, &t, 0)],
    );
    match w.verifier_needing(2).check(&bytes, T0 + 10, 1) {
        Err(BundleError::TooFewCosignatures {
            have: 1,
            need: 2,
            missing,
        }) => assert_eq!(missing, vec![B.to_string(), C.to_string()]),
        other => panic!("{other:?}"),
    }
    // Timestamp 1 is the smallest that counts.
    let bytes = with_lines(
        &b,
        vec![w.cosignature(A, &t, T0 + 1), w.cosignature(B, &t, 1)],
    );
    assert_eq!(
        w.verifier_needing(2)
            .check(&bytes, T0 + 10, 1)
            .unwrap()
            .cosigners,
        vec![A.to_string(), B.to_string()]
    );
}

#[test]
fn without_cosigners_pinned_nothing_changes_and_each_cosigned_copy_is_a_new_bundle() {
    let mut w = world();
    let b1 = w.publish(&artifact(1, 0), T0);
    let plain = b1.encode().unwrap();
    let t = text(&b1);
    let cosigned = with_lines(&b1, vec![w.cosignature(A, &t, T0 + 1)]);
    let recosigned = with_lines(
        &b1,
        vec![w.cosignature(A, &t, T0 + 1), w.cosignature(B, &t, T0 + 2)],
    );
    // k = 0: cosignatures are neither needed nor checked, even bad ones.
    let mut bad = w.cosignature(C, &t, T0 + 1);
    bad.payload[30] ^= 1;
    let with_bad = with_lines(&b1, vec![bad]);
    let mut v = w.verifier();
    assert_eq!(v.cosigners_required(), 0);
    let a = v.check(&plain, T0, 1).unwrap();
    assert!(a.cosigners.is_empty());
    v.accept(&a).unwrap();
    for bytes in [&cosigned, &recosigned, &with_bad] {
        let c = v.check(bytes, T0, 1).unwrap();
        assert!(c.cosigners.is_empty());
        // The bundle hash covers the checkpoint note: a copy with other
        // cosignatures is other bytes, checked in full, for the same
        // checkpoint.
        assert_ne!(c.bundle_hash, a.bundle_hash);
        assert_eq!(c.checkpoint, a.checkpoint);
        v.accept(&c).unwrap();
    }
    assert_eq!(v.newest_epoch(), Some(1));

    // With pins, the plain bundle accepted and its cosigned copies alternate:
    // the copy seen again keeps the cosigners its full check found.
    let mut v = w.verifier_needing(1);
    assert!(matches!(
        v.verify(&plain, T0, 1),
        Err(BundleError::TooFewCosignatures { .. })
    ));
    let a = v.check(&recosigned, T0, 1).unwrap();
    v.accept(&a).unwrap();
    let again = v.check(&recosigned, T0, 2).unwrap();
    assert_eq!(again.cosigners, vec![A.to_string(), B.to_string()]);
    assert_eq!(again.bundle_hash, a.bundle_hash);
    assert_eq!(
        v.check(&cosigned, T0, 1).unwrap().cosigners,
        vec![A.to_string()]
    );
    // A later epoch, cosigned in turn, moves the verifier on.
    let b2 = w.publish(&artifact(2, 9), T0 + DAY);
    let t2 = text(&b2);
    assert!(matches!(
        v.verify(
            &with_lines(&b2, vec![w.cosignature(A, &t, T0 + DAY)]),
            T0 + DAY,
            1
        ),
        Err(BundleError::BadCosignature { .. })
    ));
    v.verify(
        &with_lines(&b2, vec![w.cosignature(C, &t2, T0 + DAY)]),
        T0 + DAY,
        1,
    )
    .unwrap();
    assert_eq!(v.newest_epoch(), Some(2));
}

#[test]
fn pins_added_after_a_bundle_was_accepted_apply_to_its_bytes_seen_again() {
    let mut w = world();
    let plain = w.publish(&artifact(1, 0), T0).encode().unwrap();
    let mut v = w.verifier();
    v.verify(&plain, T0, 1).unwrap();
    // The same bytes would skip the signature checks; new pins check them.
    let v = v
        .require_cosigners(1, vec![w.pin(A), w.pin(B), w.pin(C)])
        .unwrap();
    assert!(matches!(
        v.check(&plain, T0, 1),
        Err(BundleError::TooFewCosignatures {
            have: 0,
            need: 1,
            ..
        })
    ));
}

#[test]
fn a_verifier_state_written_without_cosigners_stays_readable() {
    let mut w = world();
    let b1 = w.publish(&artifact(1, 0), T0);
    let b2 = w.publish(&artifact(2, 9), T0 + DAY);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("verifier.state");
    let mut v = w.verifier().persist_to(&state).unwrap();
    v.verify(&b2.encode().unwrap(), T0 + DAY, 1).unwrap();
    let written = std::fs::read_to_string(&state).unwrap();
    // Pins then state, or state then pins: the state is the same.
    for v in [
        w.verifier_needing(1).persist_to(&state).unwrap(),
        w.verifier()
            .persist_to(&state)
            .unwrap()
            .require_cosigners(1, vec![w.pin(A), w.pin(B), w.pin(C)])
            .unwrap(),
    ] {
        let mut v = v;
        assert_eq!(v.newest_epoch(), Some(2));
        // The epochs kept still apply: the previous epoch still serves.
        let t1 = text(&b1);
        let b1_cosigned = with_lines(&b1, vec![w.cosignature(B, &t1, T0 + 1)]);
        assert!(v.check(&b1_cosigned, T0 + DAY, 1).is_ok());
        let t2 = text(&b2);
        v.verify(
            &with_lines(&b2, vec![w.cosignature(B, &t2, T0 + DAY)]),
            T0 + DAY,
            1,
        )
        .unwrap();
        // Accepting the cosigned copy of the same checkpoint and epoch
        // changes nothing on disk: the pins are not persisted.
        assert_eq!(std::fs::read_to_string(&state).unwrap(), written);
    }
}

#[test]
fn require_cosigners_refuses_pins_that_cannot_work() {
    let w = world();
    let pins = || vec![w.pin(A), w.pin(B), w.pin(C)];
    for need in [0, 4] {
        assert!(matches!(
            w.verifier().require_cosigners(need, pins()),
            Err(CosignerPinError::Threshold { need: n, pinned: 3 }) if n == need
        ));
    }
    assert!(matches!(
        w.verifier().require_cosigners(1, vec![]),
        Err(CosignerPinError::Threshold { need: 1, pinned: 0 })
    ));
    let mut twice = pins();
    twice.push(CosignerKey {
        name: B.into(),
        public_key: w.cosigner_public_key("another"),
    });
    assert!(matches!(
        w.verifier().require_cosigners(2, twice),
        Err(CosignerPinError::DuplicateName(name)) if name == B
    ));
    // "the same public key can't be used across multiple cosigners" (C2SP
    // tlog-cosignature): its cosignature would count under both names.
    let mut shared = pins();
    shared.push(CosignerKey {
        name: "witness.example.com/d".into(),
        public_key: w.cosigner_public_key(C),
    });
    assert!(matches!(
        w.verifier().require_cosigners(2, shared),
        Err(CosignerPinError::DuplicateKey { first, second })
            if first == C && second == "witness.example.com/d"
    ));
    let mut own = pins();
    own.push(CosignerKey {
        name: "witness.example.com/own".into(),
        public_key: w.witness.public_key("witness-2026").unwrap(),
    });
    assert!(matches!(
        w.verifier().require_cosigners(2, own),
        Err(CosignerPinError::WitnessKey { cosigner, witness })
            if cosigner == "witness.example.com/own" && witness == "witness-2026"
    ));
    for name in ["", "has space", "plus+sign"] {
        assert!(matches!(
            w.verifier().require_cosigners(1, vec![CosignerKey { name: name.into(), public_key: [1; 32] }]),
            Err(CosignerPinError::Name { name: n, source: NoteError::InvalidKeyName(_) }) if n == name
        ));
    }
    let many = (0..=vaultfleet_audit::bundle::COSIGNERS_MAX)
        .map(|i| CosignerKey {
            name: format!("witness.example.com/{i}"),
            public_key: [i as u8; 32],
        })
        .collect::<Vec<_>>();
    assert!(matches!(
        w.verifier().require_cosigners(1, many.clone()),
        Err(CosignerPinError::TooMany { count, max }) if count == max + 1
    ));
    assert!(w
        .verifier()
        .require_cosigners(1, many[1..].to_vec())
        .is_ok());
}
