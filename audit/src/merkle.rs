//! RFC 6962 / RFC 9162 Merkle trees: leaf and node hashes with domain separation,
//! tree heads, inclusion and consistency proofs, and their verification.
//!
//! The verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 step by step. They never
//! panic on any input: sizes, indexes and proof lengths come from the network.
//! `tests/audit/merkle_vectors.rs` checks them against the transparency-dev test vectors,
//! and `proptests/` against random trees.

use sha2::{Digest, Sha256};

/// A SHA-256 Merkle hash.
pub type Hash = [u8; 32];

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not in a tree of that size.
    #[error("leaf {index} is not in a tree of size {size}")]
    IndexBeyondSize {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof between sizes in the wrong order.
    #[error("first size {first} above second size {second}: a log only grows")]
    SizesOutOfOrder {
        /// The older tree's size.
        first: u64,
        /// The newer tree's size.
        second: u64,
    },
    /// A proof asked of a tree for a size beyond the leaves it holds.
    #[error("tree size {size} beyond the {held} leaves held")]
    SizeBeyondTree {
        /// The size asked for.
        size: u64,
        /// The leaves the tree holds.
        held: u64,
    },
    /// The proof has the wrong number of hashes for these sizes.
    #[error("proof has {got} hashes, {want} expected")]
    Length {
        /// Hashes given.
        got: usize,
        /// Hashes the sizes call for.
        want: usize,
    },
    /// The proof does not lead to the claimed root.
    #[error("the proof does not lead to the claimed root")]
    RootMismatch,
}

/// The hash of a leaf: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root over leaf hashes `leaves` (RFC 6962's MTH).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n as u64) as usize;
    if m < k {
        path(m, &leaves[..k], out);
        out.push(root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(root(&leaves[..k]));
    }
}

fn subproof(m: usize, leaves: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    let k = split(n as u64) as usize;
    if m <= k {
        subproof(m, &leaves[..k], whole, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
}

/// An append-only list of leaf hashes with the proofs over any prefix of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleTree {
    leaves: Vec<Hash>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree over `leaves` (leaf hashes).
    pub fn from_leaf_hashes(leaves: Vec<Hash>) -> Self {
        Self { leaves }
    }

    /// Appends a leaf (its data) and returns its index.
    pub fn append(&mut self, data: &[u8]) -> u64 {
        self.leaves.push(leaf_hash(data));
        self.leaves.len() as u64 - 1
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// The leaf hashes.
    pub fn leaf_hashes(&self) -> &[Hash] {
        &self.leaves
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        let n = self.checked_size(size)?;
        Ok(root(&self.leaves[..n]))
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        root(&self.leaves)
    }

    fn checked_size(&self, size: u64) -> Result<usize, ProofError> {
        if size > self.size() {
            return Err(ProofError::SizeBeyondTree {
                size,
                held: self.size(),
            });
        }
        Ok(size as usize)
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        let n = self.checked_size(size)?;
        if index >= size {
            return Err(ProofError::IndexBeyondSize { index, size });
        }
        let mut out = Vec::new();
        path(index as usize, &self.leaves[..n], &mut out);
        Ok(out)
    }

    /// The consistency proof between the trees of `first` and `second` leaves.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, ProofError> {
        let n = self.checked_size(second)?;
        if first > second {
            return Err(ProofError::SizesOutOfOrder { first, second });
        }
        let mut out = Vec::new();
        if first > 0 && first < second {
            subproof(first as usize, &self.leaves[..n], true, &mut out);
        }
        Ok(out)
    }
}

/// Verifies that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves
/// whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::Length {
                got: proof.len(),
                want: proof.len().saturating_sub(1),
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::Length {
            got: proof.len(),
            want: proof.len() + (64 - sn.leading_zeros() as usize),
        });
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of `second` leaves with root `second_root` extends the
/// tree of `first` leaves with root `first_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Hash],
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), ProofError> {
    if first > second {
        return Err(ProofError::SizesOutOfOrder { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::Length {
                got: proof.len(),
                want: 0,
            });
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if first == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Length {
                got: proof.len(),
                want: 0,
            })
        };
    }
    if proof.is_empty() {
        return Err(ProofError::Length { got: 0, want: 1 });
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::Length {
                got: proof.len(),
                want: proof.len().saturating_sub(1),
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::Length {
            got: proof.len(),
            want: proof.len() + 1,
        });
    }
    if &fr != first_root || &sr != second_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proof_of_every_small_tree_verifies_and_a_changed_one_does_not() {
        let mut t = MerkleTree::new();
        for i in 0..40u32 {
            t.append(&i.to_be_bytes());
        }
        for size in 1..=t.size() {
            let r = t.root_at(size).unwrap();
            for index in 0..size {
                let p = t.inclusion_proof(index, size).unwrap();
                let leaf = t.leaf_hashes()[index as usize];
                verify_inclusion(&leaf, index, size, &p, &r).unwrap();
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert_eq!(
                        verify_inclusion(&leaf, index, size, &bad, &r),
                        Err(ProofError::RootMismatch)
                    );
                }
                if index + 1 < size {
                    assert!(verify_inclusion(&leaf, index + 1, size, &p, &r).is_err());
                }
            }
            for first in 0..=size {
                let p = t.consistency_proof(first, size).unwrap();
                let r1 = t.root_at(first).unwrap();
                verify_consistency(first, size, &p, &r1, &r).unwrap();
                if first > 0 && first < size {
                    let mut wrong = r1;
                    wrong[5] ^= 0x80;
                    assert_eq!(
                        verify_consistency(first, size, &p, &wrong, &r),
                        Err(ProofError::RootMismatch)
                    );
                }
            }
        }
    }

    #[test]
    fn hostile_sizes_are_errors_not_panics() {
        let h = [0u8; 32];
        assert_eq!(
            verify_inclusion(&h, u64::MAX, u64::MAX, &[h; 70], &h),
            Err(ProofError::IndexBeyondSize {
                index: u64::MAX,
                size: u64::MAX
            })
        );
        assert_eq!(
            verify_inclusion(&h, 0, 0, &[], &h),
            Err(ProofError::IndexBeyondSize { index: 0, size: 0 })
        );
        assert_eq!(
            verify_consistency(u64::MAX, u64::MAX - 1, &[h], &h, &h),
            Err(ProofError::SizesOutOfOrder {
                first: u64::MAX,
                second: u64::MAX - 1
            })
        );
        assert!(matches!(
            verify_consistency(u64::MAX - 1, u64::MAX, &[h; 130], &h, &h),
            Err(ProofError::Length { got: 130, .. })
        ));
        assert_eq!(
            MerkleTree::new().inclusion_proof(0, 1),
            Err(ProofError::SizeBeyondTree { size: 1, held: 0 })
        );
        assert_eq!(
            MerkleTree::new().consistency_proof(1, 0),
            Err(ProofError::SizesOutOfOrder {
                first: 1,
                second: 0
            })
        );
    }
}
