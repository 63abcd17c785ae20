//! The descriptor's encoding and its checks, and the hash list that gives its
//! digest.
//!
//! Layout (the engine's [`codec`](crate::codec), big-endian): `u8 format (1) |
//! u64 group | u64 creator | u64 index | u64 term | [16] id | u64 total_bytes
//! | u32 chunk_bytes | u32 chunks | [32] digest` (97 bytes).
//!
//! Digest: `SHA-256(labeled("vaultfleet/snapshot/v1", [group, creator, index,
//! term, total_bytes, chunk_bytes, chunks, h_0 ‖ … ‖ h_{n-1}]))` with `h_i` the
//! SHA-256 of plaintext chunk `i` under its own label and sequence number. The
//! list, not one running hash, so a receiver or reader keeps 32 bytes per
//! chunk rather than a hasher's state, and a resumed transfer needs no state
//! but the hashes of the chunks it has.

use sha2::{Digest as _, Sha256};

use super::{
    SnapshotDescriptor, SnapshotFileError, SnapshotId, CHUNK_BYTES_MAX, CHUNK_BYTES_MIN,
    DESCRIPTOR_FORMAT, SNAPSHOT_BYTES_MAX,
};
use crate::codec::{labeled, Codec, DecodeError, EncodeError, Reader, Writer};
use crate::ReplicaId;

const DIGEST_LABEL: &[u8] = b"vaultfleet/snapshot/v1";
const CHUNK_LABEL: &[u8] = b"vaultfleet/snapshot-chunk-hash/v1";
const ID_LABEL: &[u8] = b"vaultfleet/snapshot-id/v1";

/// The encoded length of a descriptor.
pub const DESCRIPTOR_BYTES: usize = 1 + 8 * 4 + 16 + 8 + 4 + 4 + 32;

/// The hash of plaintext chunk `seq`: the element of the hash list.
pub fn chunk_digest(seq: u32, chunk: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(labeled(CHUNK_LABEL, &[&seq.to_be_bytes()]));
    h.update(chunk);
    h.finalize().into()
}

/// The number of chunks a stream of `total_bytes` cut into `chunk_bytes`
/// pieces has.
pub fn chunk_count(total_bytes: u64, chunk_bytes: u32) -> u64 {
    total_bytes.div_ceil(u64::from(chunk_bytes.max(1)))
}

/// Builds a descriptor's digest chunk by chunk, in order: what a writer, a
/// receiver and a reader each run over the chunks they see.
#[derive(Clone)]
pub struct SnapshotDigester {
    hashes: Vec<u8>,
    total_bytes: u64,
    chunks: u32,
}

impl SnapshotDigester {
    /// A digester before the first chunk.
    pub fn new() -> Self {
        Self {
            hashes: Vec::new(),
            total_bytes: 0,
            chunks: 0,
        }
    }

    /// Adds the next chunk (its sequence number is the number added so far).
    pub fn add(&mut self, chunk: &[u8]) {
        let h = chunk_digest(self.chunks, chunk);
        self.hashes.extend_from_slice(&h);
        self.total_bytes += chunk.len() as u64;
        self.chunks += 1;
    }

    /// The chunks added so far.
    pub fn chunks(&self) -> u32 {
        self.chunks
    }

    /// The plaintext bytes added so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The root for a snapshot of `group` by `creator` at `index` / `term`
    /// cut into `chunk_bytes` chunks, over the chunks added.
    pub fn root(
        &self,
        group: u64,
        creator: ReplicaId,
        index: u64,
        term: u64,
        chunk_bytes: u32,
    ) -> [u8; 32] {
        let fields: [&[u8]; 8] = [
            &group.to_be_bytes(),
            &creator.to_be_bytes(),
            &index.to_be_bytes(),
            &term.to_be_bytes(),
            &self.total_bytes.to_be_bytes(),
            &chunk_bytes.to_be_bytes(),
            &self.chunks.to_be_bytes(),
            &self.hashes,
        ];
        Sha256::digest(labeled(DIGEST_LABEL, &fields)).into()
    }

    /// The descriptor of the chunks added, for a snapshot written by
    /// `creator` (its id derived from the digest).
    pub fn descriptor(
        &self,
        group: u64,
        creator: ReplicaId,
        index: u64,
        term: u64,
        chunk_bytes: u32,
    ) -> Result<SnapshotDescriptor, SnapshotFileError> {
        let digest = self.root(group, creator, index, term, chunk_bytes);
        let d = SnapshotDescriptor {
            group,
            creator,
            index,
            term,
            id: snapshot_id(group, creator, &digest),
            total_bytes: self.total_bytes,
            chunk_bytes,
            chunks: self.chunks,
            digest,
        };
        d.check()?;
        Ok(d)
    }

    /// True when the chunks added are the ones `descriptor` names, compared
    /// in constant time.
    pub fn matches(&self, descriptor: &SnapshotDescriptor) -> bool {
        use subtle::ConstantTimeEq as _;
        let root = self.root(
            descriptor.group,
            descriptor.creator,
            descriptor.index,
            descriptor.term,
            descriptor.chunk_bytes,
        );
        self.chunks == descriptor.chunks
            && self.total_bytes == descriptor.total_bytes
            && bool::from(root.ct_eq(&descriptor.digest))
    }
}

/// The id of a snapshot of `group` by `creator` with `digest`: the first 16
/// bytes of a labelled SHA-256 over them. The digest binds the index, the
/// term and every chunk, so two descriptors with the same id name the same
/// bytes, and a file of an id is never replaced by other content.
pub fn snapshot_id(group: u64, creator: ReplicaId, digest: &[u8; 32]) -> SnapshotId {
    let id_hash = Sha256::digest(labeled(
        ID_LABEL,
        &[&group.to_be_bytes(), &creator.to_be_bytes(), digest],
    ));
    let mut id = [0u8; 16];
    id.copy_from_slice(&id_hash[..16]);
    SnapshotId(id)
}

impl Default for SnapshotDigester {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotDescriptor {
    /// Checks the invariants listed on [`SnapshotDescriptor`].
    pub fn check(&self) -> Result<(), SnapshotFileError> {
        let bad = |what: &'static str| Err(SnapshotFileError::BadDescriptor { what });
        if !(CHUNK_BYTES_MIN..=CHUNK_BYTES_MAX).contains(&self.chunk_bytes) {
            return bad("its chunk size is outside 64 KiB..=4 MiB");
        }
        if self.total_bytes > SNAPSHOT_BYTES_MAX {
            return bad("its size is above 64 GiB");
        }
        if u64::from(self.chunks) != chunk_count(self.total_bytes, self.chunk_bytes) {
            return bad("its chunk count does not match its size and chunk size");
        }
        // Not secret: a plain comparison.
        if self.id != snapshot_id(self.group, self.creator, &self.digest) {
            return bad("its id is not the one its group, creator and digest give");
        }
        Ok(())
    }

    /// The plaintext length of chunk `seq` (`None` past the last chunk).
    pub fn chunk_len(&self, seq: u32) -> Option<usize> {
        if seq >= self.chunks {
            return None;
        }
        let start = u64::from(seq).checked_mul(u64::from(self.chunk_bytes))?;
        let len = self
            .total_bytes
            .checked_sub(start)?
            .min(u64::from(self.chunk_bytes));
        usize::try_from(len).ok()
    }
}

impl Codec<'_> for SnapshotDescriptor {
    const WHAT: &'static str = "snapshot descriptor";

    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(DESCRIPTOR_FORMAT)
            .u64(self.group)
            .u64(self.creator)
            .u64(self.index)
            .u64(self.term)
            .raw(&self.id.0)
            .u64(self.total_bytes)
            .u32(self.chunk_bytes)
            .u32(self.chunks)
            .raw(&self.digest);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version(DESCRIPTOR_FORMAT, "snapshot descriptor format")?;
        let d = SnapshotDescriptor {
            group: r.u64("snapshot descriptor group")?,
            creator: r.u64("snapshot descriptor creator")?,
            index: r.u64("snapshot descriptor index")?,
            term: r.u64("snapshot descriptor term")?,
            id: SnapshotId(r.array("snapshot descriptor id")?),
            total_bytes: r.u64("snapshot descriptor size")?,
            chunk_bytes: r.u32("snapshot descriptor chunk size")?,
            chunks: r.u32("snapshot descriptor chunk count")?,
            digest: r.array("snapshot descriptor digest")?,
        };
        if d.check().is_err() {
            return Err(DecodeError::Invalid {
                what: "snapshot descriptor (size, chunk size and chunk count disagree)",
            });
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digester(chunks: &[&[u8]]) -> SnapshotDigester {
        let mut d = SnapshotDigester::new();
        for c in chunks {
            d.add(c);
        }
        d
    }

    #[test]
    fn a_descriptor_round_trips_and_has_its_stated_length() {
        let chunk = vec![7u8; CHUNK_BYTES_MIN as usize];
        let d = digester(&[&chunk, b"tail"])
            .descriptor(3, 2, 100, 4, CHUNK_BYTES_MIN)
            .unwrap();
        let bytes = d.to_bytes().unwrap();
        assert_eq!(bytes.len(), DESCRIPTOR_BYTES);
        assert_eq!(SnapshotDescriptor::from_bytes(&bytes).unwrap(), d);
        assert_eq!(d.chunk_len(0), Some(CHUNK_BYTES_MIN as usize));
        assert_eq!(d.chunk_len(1), Some(4));
        assert_eq!(d.chunk_len(2), None);
    }

    #[test]
    fn inconsistent_descriptors_are_refused() {
        let d = digester(&[b"x"])
            .descriptor(1, 1, 1, 1, CHUNK_BYTES_MIN)
            .unwrap();
        for (what, edit) in [
            (
                "count",
                (|d: &mut SnapshotDescriptor| d.chunks = 2) as fn(&mut _),
            ),
            ("no chunk for a byte", |d| d.chunks = 0),
            ("size", |d| d.total_bytes = u64::from(CHUNK_BYTES_MIN) + 1),
            ("small chunks", |d| d.chunk_bytes = CHUNK_BYTES_MIN - 1),
            ("large chunks", |d| d.chunk_bytes = CHUNK_BYTES_MAX + 1),
            ("huge", |d| {
                d.total_bytes = SNAPSHOT_BYTES_MAX + 1;
                d.chunk_bytes = CHUNK_BYTES_MAX;
                d.chunks = chunk_count(d.total_bytes, d.chunk_bytes) as u32;
            }),
        ] {
            let mut bad = d.clone();
            edit(&mut bad);
            assert!(bad.check().is_err(), "{what}");
            let bytes = bad.to_bytes().unwrap();
            assert!(SnapshotDescriptor::from_bytes(&bytes).is_err(), "{what}");
        }
    }

    #[test]
    fn the_digest_binds_every_field_and_every_chunk() {
        // The hash list alone (these chunk sizes break the size rule, which
        // `check` enforces separately).
        let base = digester(&[b"a", b"b"]);
        let d = SnapshotDescriptor {
            group: 1,
            creator: 2,
            index: 3,
            term: 4,
            id: SnapshotId([0; 16]),
            total_bytes: 2,
            chunk_bytes: CHUNK_BYTES_MIN,
            chunks: 2,
            digest: base.root(1, 2, 3, 4, CHUNK_BYTES_MIN),
        };
        assert!(base.matches(&d));
        assert!(!digester(&[b"b", b"a"]).matches(&d), "reordered chunks");
        assert!(!digester(&[b"a"]).matches(&d), "a chunk dropped");
        assert!(!digester(&[b"a", b"c"]).matches(&d), "an edited chunk");
        assert!(!digester(&[b"ab"]).matches(&d), "chunks joined");
        for edit in [
            (|d: &mut SnapshotDescriptor| d.group += 1) as fn(&mut _),
            |d| d.creator += 1,
            |d| d.index += 1,
            |d| d.term += 1,
            |d| d.chunk_bytes += 1,
            |d| d.digest[31] ^= 1,
        ] {
            let mut other = d.clone();
            edit(&mut other);
            assert!(!base.matches(&other), "{other:?}");
        }
    }

    #[test]
    fn a_descriptor_whose_id_is_not_its_digests_is_refused() {
        let d = digester(&[b"x"])
            .descriptor(1, 1, 1, 1, CHUNK_BYTES_MIN)
            .unwrap();
        // Another snapshot's descriptor under this one's id (a peer that
        // wants to replace a held file).
        let other = digester(&[b"y"])
            .descriptor(1, 1, 1, 1, CHUNK_BYTES_MIN)
            .unwrap();
        let mut forged = other.clone();
        forged.id = d.id;
        assert!(forged.check().is_err());
        assert!(SnapshotDescriptor::from_bytes(&forged.to_bytes().unwrap()).is_err());
        assert!(other.check().is_ok());
    }

    #[test]
    fn an_empty_snapshot_has_no_chunk() {
        let d = SnapshotDigester::new()
            .descriptor(1, 1, 1, 1, CHUNK_BYTES_DEFAULT)
            .unwrap();
        assert_eq!((d.chunks, d.total_bytes), (0, 0));
        assert_eq!(d.chunk_len(0), None);
    }

    use super::super::CHUNK_BYTES_DEFAULT;
}
