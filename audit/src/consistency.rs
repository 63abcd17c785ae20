//! The wire form of an RFC 6962 consistency proof between two sizes of a log, so
//! a reply can prove to a client that the checkpoint it carries extends (or is a
//! prefix of) the one the client last accepted.
//!
//! Layout (engine codec, version 1): the magic `vaultfleet/consistency-proof`, a
//! version byte, the smaller size and the larger size (`u64` each), a `u8` count
//! of hashes and the 32-byte hashes. Nothing in it is signed: the two roots it
//! links come from witness-signed checkpoints, and [`verify_consistency`] does
//! the rest.
//!
//! [`verify_consistency`]: crate::merkle::verify_consistency

use crate::merkle::{Hash, MerkleTree, ProofError};
use vaultfleet::codec::{DecodeError, EncodeError, Prefix, Reader, Writer};

const MAGIC: &[u8] = b"vaultfleet/consistency-proof";
/// The encoding's version.
pub const VERSION: u8 = 1;
/// Most hashes in a consistency proof: one between trees of at most 2^64 leaves
/// has at most 65, so anything longer is refused before it is read.
pub const CONSISTENCY_HASHES_MAX: usize = 66;

const _: () = assert!(CONSISTENCY_HASHES_MAX <= Prefix::U8.max());

/// A consistency proof from the tree of `from_size` leaves to the tree of
/// `to_size` leaves (`from_size <= to_size`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The smaller tree's size.
    pub from_size: u64,
    /// The larger tree's size.
    pub to_size: u64,
    /// The RFC 9162 §2.1.4 proof hashes.
    pub hashes: Vec<Hash>,
}

impl ConsistencyProof {
    /// The proof in `tree` between sizes `a` and `b`, in either order: a client
    /// asks from the size it knows, and the checkpoint it is sent may be newer
    /// or (from a replica still on the previous epoch) older.
    pub fn between(tree: &MerkleTree, a: u64, b: u64) -> Result<Self, ProofError> {
        let (from_size, to_size) = (a.min(b), a.max(b));
        Ok(Self {
            from_size,
            to_size,
            hashes: tree.consistency_proof(from_size, to_size)?,
        })
    }

    /// The canonical encoding (see the module's documentation).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::with_capacity(MAGIC.len() + 18 + 32 * self.hashes.len());
        w.raw(MAGIC)
            .u8(VERSION)
            .u64(self.from_size)
            .u64(self.to_size)
            .length(
                Prefix::U8,
                CONSISTENCY_HASHES_MAX,
                self.hashes.len(),
                "consistency proof hashes",
            )?;
        for h in &self.hashes {
            w.raw(h);
        }
        Ok(w.into_vec())
    }

    /// Decodes [`ConsistencyProof::encode`]'s output and nothing else.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.magic(MAGIC, "consistency proof magic")?;
        r.version(VERSION, "consistency proof")?;
        let from_size = r.u64("consistency proof first size")?;
        let to_size = r.u64("consistency proof second size")?;
        let n = r.length(
            Prefix::U8,
            CONSISTENCY_HASHES_MAX,
            "consistency proof hashes",
        )?;
        let mut hashes = Vec::with_capacity(n.min(r.left() / 32));
        for _ in 0..n {
            hashes.push(r.array("consistency proof hash")?);
        }
        r.expect_empty("consistency proof")?;
        Ok(Self {
            from_size,
            to_size,
            hashes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_round_trips_and_every_other_spelling_is_refused() {
        let mut t = MerkleTree::new();
        for i in 0..13u32 {
            t.append(&i.to_be_bytes());
        }
        let p = ConsistencyProof::between(&t, 13, 5).unwrap();
        assert_eq!((p.from_size, p.to_size), (5, 13));
        let bytes = p.encode().unwrap();
        assert_eq!(bytes.len(), MAGIC.len() + 1 + 16 + 1 + 32 * p.hashes.len());
        assert_eq!(ConsistencyProof::decode(&bytes).unwrap(), p);
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    ConsistencyProof::decode(&bytes[..cut]),
                    Err(DecodeError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            ConsistencyProof::decode(&trailing),
            Err(DecodeError::TrailingBytes { left: 1, .. })
        ));
        let mut newer = bytes.clone();
        newer[MAGIC.len()] = 2;
        assert!(matches!(
            ConsistencyProof::decode(&newer),
            Err(DecodeError::Version {
                found: 2,
                expected: 1,
                ..
            })
        ));
        let mut other = bytes.clone();
        other[0] ^= 1;
        assert!(matches!(
            ConsistencyProof::decode(&other),
            Err(DecodeError::Invalid {
                what: "consistency proof magic"
            })
        ));
        let mut long = bytes[..MAGIC.len() + 17].to_vec();
        long.push(CONSISTENCY_HASHES_MAX as u8 + 1);
        assert!(matches!(
            ConsistencyProof::decode(&long),
            Err(DecodeError::TooLong { .. })
        ));
        assert!(matches!(
            ConsistencyProof::between(&t, 3, 14),
            Err(ProofError::SizeBeyondTree { size: 14, held: 13 })
        ));
    }
}
