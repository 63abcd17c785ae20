//! Golden vectors for every signed encoding besides the artifact (whose vectors
//! are in `fleet_keys.rs`): the witness statement, the log leaf, the operator's
//! countersigned bytes, the vendor certificate, the HSM attestation, the key
//! ceremony record, the deployment evidence and the validation bundle; and the
//! encodings added since (the epoch retirement and the consistency proof), whose
//! vectors come from an independent re-implementation of their documented layout.
//!
//! The expected SHA-256 values were computed by an independent re-implementation
//! of the byte layouts as they were before the encodings moved onto
//! `vaultfleet::codec`, so everything already signed, witnessed and logged
//! still verifies. A change here means a new format version, not a new vector.

use sha2::{Digest, Sha256};
use vaultfleet_audit::fleet::evidence::{Attestation, Ceremony, DeviceCertificate, Evidence};
use vaultfleet_audit::fleet::ReplicaKeys;
use vaultfleet_audit::witness::{countersigned_bytes, leaf_bytes};
use vaultfleet_audit::{Bundle, ConsistencyProof, EpochRetirement, Statement};

const NS: &str = "example.vault.fleet_keys.v1";
const T0: u64 = 1_800_000_000;

fn pinned(what: &str, bytes: &[u8], len: usize, sha256: &str) {
    let hash: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        (bytes.len(), hash.as_str()),
        (len, sha256),
        "the {what} encoding changed: everything signed before no longer verifies; add a new version instead"
    );
}

fn statement() -> Statement {
    Statement {
        namespace: NS.into(),
        timestamp: T0,
        epoch: 3,
        digest: [0x11; 32],
    }
}

fn ceremony() -> Ceremony {
    Ceremony {
        artifact_digest: [0x44; 32],
        firmware: vec![(1, [0x55; 32]), (2, [0x66; 32])],
        threshold: 2,
        signatures: vec![("officer-1".into(), [0x77; 64])],
    }
}

#[test]
fn witness_statement_leaf_and_countersignature_bytes_are_pinned() {
    pinned(
        "witness statement",
        &statement().signed_bytes().unwrap(),
        108,
        "b02a58fd1eaabb50c642f9a907b6208b407b4706fb3c320b67468e31ff4fe12e",
    );
    pinned(
        "log leaf",
        &leaf_bytes(&statement(), "witness-2026", &[0x22; 64]).unwrap(),
        185,
        "25b74cabd8acfb40f7ac3334a55dc79bc00dd9d55988182188b1a58d24b98d77",
    );
    pinned(
        "countersigned bytes",
        &countersigned_bytes("witness-2026", &[0x22; 64]).unwrap(),
        112,
        "91ea4e5599f80672e5b5f9c7fb755373e5570c07aa4f20d019a4eb0579c74015",
    );
}

#[test]
fn evidence_statements_and_encoding_are_pinned() {
    pinned(
        "device certificate",
        &DeviceCertificate::signed_bytes("example-vendor", "hsm-1", &[0x33; 32]).unwrap(),
        92,
        "18d81f26bd596e62b7e51afc7170a0ecfc7523bcbf2384ac3afd2386a589ddd8",
    );
    let replica = ReplicaKeys {
        id: 2,
        datacenter: "dc-b".into(),
        response_key: [1; 32],
        transport_key: [2; 32],
        opaque_key: [3; 32],
    };
    pinned(
        "HSM attestation",
        &Attestation::signed_bytes(&[0x44; 32], &replica, &[0x55; 32]).unwrap(),
        206,
        "f1d724b66a61d7c91c9052e85a33421f1e99589e7b449f2f8d3908714397d651",
    );
    pinned(
        "key ceremony record",
        &ceremony().signed_bytes().unwrap(),
        144,
        "1da47466560ddec19abcda2cfbe5734e86ca400609d4c1066239c4bdacbd0776",
    );
    let evidence = Evidence {
        bundle: b"bundle bytes".to_vec(),
        attestations: vec![Attestation {
            replica: 2,
            firmware: [0x55; 32],
            certificate: DeviceCertificate {
                vendor: "example-vendor".into(),
                device: "hsm-1".into(),
                device_key: [0x33; 32],
                signature: [0x99; 64],
            },
            signature: [0xab; 64],
        }],
        ceremony: ceremony(),
    };
    let bytes = evidence.encode().unwrap();
    pinned(
        "deployment evidence",
        &bytes,
        467,
        "3a00bc9d8c9366d29bc25b4b039edea1fab1b286e702ac847ebd2c8de1fae594",
    );
    assert_eq!(Evidence::decode(&bytes).unwrap(), evidence);
}

#[test]
fn the_bundle_encoding_is_pinned() {
    let bundle = Bundle {
        artifact: vec![9; 10],
        digest: [0x11; 32],
        namespace: NS.into(),
        timestamp: T0,
        epoch: 3,
        witness_key: "witness-2026".into(),
        witness_signature: [0x22; 64],
        countersignature: [0x88; 64],
        leaf_index: 5,
        inclusion: vec![[0xaa; 32], [0xbb; 32]],
        checkpoint: "cp\n".into(),
    };
    let bytes = bundle.encode().unwrap();
    pinned(
        "validation bundle",
        &bytes,
        340,
        "21b93dfcacbc510f68ad6db67acf0520d36bb395135df40f5e70c6eb332ad4c9",
    );
    assert_eq!(Bundle::decode(&bytes).unwrap(), bundle);
}

#[test]
fn names_too_long_to_sign_do_not_encode() {
    use vaultfleet::codec::EncodeError;
    let mut s = statement();
    s.namespace = "n".repeat(256);
    assert!(matches!(
        s.signed_bytes(),
        Err(EncodeError::TooLong {
            len: 256,
            max: 255,
            ..
        })
    ));
    assert!(matches!(
        countersigned_bytes(&"k".repeat(256), &[0; 64]),
        Err(EncodeError::TooLong { len: 256, .. })
    ));
    assert!(matches!(
        leaf_bytes(&statement(), &"k".repeat(300), &[0; 64]),
        Err(EncodeError::TooLong { len: 300, .. })
    ));
}

#[test]
fn epoch_retirement_and_consistency_proof_encodings_are_pinned() {
    pinned(
        "retirement witness bytes",
        &EpochRetirement::signed_bytes(NS, T0, 2),
        121,
        "592b355c8f67a90e7e38f1275671625624aea9060d5f0c82bed0a794ede01c7f",
    );
    pinned(
        "retirement countersigned bytes",
        &EpochRetirement::countersigned_bytes("witness-2026", &[0x22; 64]),
        147,
        "b5f0a782abf4dcafc2498cc1954d2a656e8ac2586d6963bb09fdeb195cb5515f",
    );
    let retirement = EpochRetirement {
        namespace: NS.into(),
        timestamp: T0,
        retired_through: 2,
        witness_key: "witness-2026".into(),
        witness_signature: [0x22; 64],
        countersignature: [0x33; 64],
    };
    let bytes = retirement.encode().unwrap();
    pinned(
        "epoch retirement",
        &bytes,
        213,
        "9b826d044379de148a00b725370d67d68ad5e10ab6de413492fdc10b2f463008",
    );
    assert_eq!(EpochRetirement::decode(&bytes).unwrap(), retirement);
    let proof = ConsistencyProof {
        from_size: 3,
        to_size: 7,
        hashes: vec![[1; 32], [2; 32], [3; 32]],
    };
    let bytes = proof.encode().unwrap();
    pinned(
        "consistency proof",
        &bytes,
        142,
        "962cd734224ead78617e06ba46695712622b3aa5941dddf5d9f528c70a0ee07b",
    );
    assert_eq!(ConsistencyProof::decode(&bytes).unwrap(), proof);
}
