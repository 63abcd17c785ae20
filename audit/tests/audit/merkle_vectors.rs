//! vaultfleet's RFC 6962 code against the transparency-dev test vectors in
//! `tests/data/transparency-dev/` (copied from github.com/transparency-dev/merkle):
//! every happy path verifies, every refused variant is refused, and the proofs and
//! roots we generate for the RFC 6962 reference tree are the vectors' bytes.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;
use vaultfleet_audit::merkle::{verify_consistency, verify_inclusion, Hash, MerkleTree};

/// The eight leaves of the RFC 6962 reference tree the vectors are built on.
const LEAVES: [&[u8]; 8] = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
];

fn vectors(kind: &str) -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/transparency-dev");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("vector directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(kind) && n.ends_with(".json"))
        })
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("vector");
            (
                p.display().to_string(),
                serde_json::from_str(&text).expect("json"),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no {kind} vectors");
    out
}

/// A base64 field as a hash; `None` when it is not 32 bytes (a refused vector).
fn hash(v: &Value) -> Option<Hash> {
    let bytes = B64.decode(v.as_str()?).ok()?;
    bytes.as_slice().try_into().ok()
}

fn proof(v: &Value) -> Option<Vec<Hash>> {
    match v {
        Value::Null => Some(Vec::new()),
        Value::Array(a) => a.iter().map(hash).collect(),
        _ => None,
    }
}

fn reference_tree() -> MerkleTree {
    let mut t = MerkleTree::new();
    for leaf in LEAVES {
        t.append(leaf);
    }
    t
}

#[test]
fn inclusion_vectors() {
    let tree = reference_tree();
    for (name, v) in vectors("inclusion") {
        let index = v["leafIdx"].as_u64().expect("leafIdx");
        let size = v["treeSize"].as_u64().expect("treeSize");
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        let verdict = match (hash(&v["leafHash"]), hash(&v["root"]), proof(&v["proof"])) {
            (Some(leaf), Some(root), Some(p)) => verify_inclusion(&leaf, index, size, &p, &root),
            _ => Err(vaultfleet_audit::ProofError::RootMismatch),
        };
        assert_eq!(verdict.is_err(), want_err, "{name}: {verdict:?}");
        if !want_err {
            assert_eq!(
                Some(tree.root_at(size).unwrap()),
                hash(&v["root"]),
                "{name}: root"
            );
            assert_eq!(
                Some(tree.inclusion_proof(index, size).unwrap()),
                proof(&v["proof"]),
                "{name}: our proof differs from the vector's"
            );
        }
    }
}

#[test]
fn consistency_vectors() {
    let tree = reference_tree();
    for (name, v) in vectors("consistency") {
        let first = v["size1"].as_u64().expect("size1");
        let second = v["size2"].as_u64().expect("size2");
        let want_err = v["wantErr"].as_bool().expect("wantErr");
        let verdict = match (hash(&v["root1"]), hash(&v["root2"]), proof(&v["proof"])) {
            (Some(r1), Some(r2), Some(p)) => verify_consistency(first, second, &p, &r1, &r2),
            _ => Err(vaultfleet_audit::ProofError::RootMismatch),
        };
        assert_eq!(verdict.is_err(), want_err, "{name}: {verdict:?}");
        if !want_err {
            assert_eq!(
                Some(tree.consistency_proof(first, second).unwrap()),
                proof(&v["proof"]),
                "{name}: our proof differs from the vector's"
            );
        }
    }
}
