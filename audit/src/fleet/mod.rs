//! Fleet keys: one artifact per fleet epoch naming every replica's keys, the
//! quorum and a validity window, in a canonical, versioned binary encoding whose
//! SHA-256 is the digest the witness and the operator sign.
//!
//! The encoding is strict: big-endian integers, length-prefixed byte strings,
//! replicas in ascending id order with no duplicates, voters and learners sorted,
//! disjoint and drawn from the replicas, and no trailing bytes. So one artifact has
//! exactly one encoding and one digest, and a decoder never accepts two spellings
//! of the same fleet. `tests/audit/fleet_keys.rs` pins the encoding with golden vectors.

use sha2::{Digest, Sha256};

use vaultfleet::codec::{DecodeError, EncodeError, Prefix, Reader, Writer};
use vaultfleet::ReplicaId;

pub mod evidence;

const MAGIC: &[u8] = b"vaultfleet/fleet-artifact";
/// The encoding's version.
pub const VERSION: u8 = 1;
/// Most replicas in one artifact (the count is one byte).
pub const REPLICAS_MAX: usize = 255;
/// Longest fleet id or datacenter label, in bytes (the length is one byte).
pub const TEXT_BYTES_MAX: usize = 255;

const _: () = assert!(REPLICAS_MAX <= Prefix::U8.max());
const _: () = assert!(TEXT_BYTES_MAX <= Prefix::U8.max());

/// One replica's entry in a fleet artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaKeys {
    /// Raft id.
    pub id: ReplicaId,
    /// Datacenter label.
    pub datacenter: String,
    /// Ed25519 key that signs the vault's replies.
    pub response_key: [u8; 32],
    /// X25519 static key of the replica process's Noise transport
    /// (`vaultfleet-net`): what its peers pin (`vaultfleet_vault::peer_directory`)
    /// and what a vault client checks the server proved.
    pub transport_key: [u8; 32],
    /// The OPAQUE server public key (Ristretto255) this replica answers with.
    pub opaque_key: [u8; 32],
}

/// A fleet's keys for one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetArtifact {
    /// The fleet's name.
    pub fleet_id: String,
    /// Epoch: 1 for the first fleet, +1 per rotation.
    pub epoch: u64,
    /// The replicas, ascending by id.
    pub replicas: Vec<ReplicaKeys>,
    /// Voting members.
    pub voters: Vec<ReplicaId>,
    /// Learners.
    pub learners: Vec<ReplicaId>,
    /// Valid from (seconds since the Unix epoch, inclusive).
    pub not_before: u64,
    /// Valid until (exclusive).
    pub not_after: u64,
}

/// An artifact that does not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The bytes do not start with the artifact's magic string.
    #[error("not a vaultfleet fleet artifact (its magic bytes differ)")]
    NotAnArtifact,
    /// The bytes do not decode (cut short, trailing bytes, a version this build
    /// does not read, text that is not UTF-8).
    #[error("malformed fleet artifact: {0}")]
    Decode(#[from] DecodeError),
    /// A field does not fit its encoding.
    #[error("fleet artifact does not encode: {0}")]
    Encode(#[from] EncodeError),
    /// The artifact breaks a rule its one-encoding-per-fleet property relies on.
    #[error("invalid fleet artifact: {0}")]
    Rule(#[from] ArtifactRule),
}

/// The rule of [`FleetArtifact::validate`] an artifact breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactRule {
    /// The fleet id is empty or too long.
    #[error("the fleet id must be 1..={} bytes", TEXT_BYTES_MAX)]
    FleetIdLength,
    /// Epoch 0.
    #[error("epochs start at 1")]
    EpochZero,
    /// No replicas, or too many.
    #[error("a fleet has 1..={} replicas", REPLICAS_MAX)]
    ReplicaCount,
    /// Replica ids are zero, repeated or out of order.
    #[error("replica ids must be non-zero, unique and ascending")]
    ReplicaIds,
    /// A datacenter label is empty or too long.
    #[error("datacenter labels must be 1..={} bytes", TEXT_BYTES_MAX)]
    DatacenterLength,
    /// No voter, or voters or learners repeated or out of order.
    #[error("voters (at least one) and learners must be unique and ascending")]
    MemberOrder,
    /// A voter or learner is not a replica of the artifact, or is both.
    #[error("voters and learners must be disjoint replicas of the artifact")]
    Membership,
    /// `not_before` is not before `not_after`.
    #[error("not_before must be before not_after")]
    ValidityWindow,
}

fn strictly_ascending(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

impl FleetArtifact {
    /// Checks the rules the encoding relies on.
    pub fn validate(&self) -> Result<(), ArtifactRule> {
        if self.fleet_id.is_empty() || self.fleet_id.len() > TEXT_BYTES_MAX {
            return Err(ArtifactRule::FleetIdLength);
        }
        if self.epoch == 0 {
            return Err(ArtifactRule::EpochZero);
        }
        if self.replicas.is_empty() || self.replicas.len() > REPLICAS_MAX {
            return Err(ArtifactRule::ReplicaCount);
        }
        let ids: Vec<u64> = self.replicas.iter().map(|r| r.id).collect();
        if !strictly_ascending(&ids) || ids.contains(&0) {
            return Err(ArtifactRule::ReplicaIds);
        }
        if self
            .replicas
            .iter()
            .any(|r| r.datacenter.is_empty() || r.datacenter.len() > TEXT_BYTES_MAX)
        {
            return Err(ArtifactRule::DatacenterLength);
        }
        if self.voters.is_empty()
            || !strictly_ascending(&self.voters)
            || !strictly_ascending(&self.learners)
        {
            return Err(ArtifactRule::MemberOrder);
        }
        if self
            .voters
            .iter()
            .chain(&self.learners)
            .any(|id| !ids.contains(id))
            || self.voters.iter().any(|v| self.learners.contains(v))
        {
            return Err(ArtifactRule::Membership);
        }
        if self.not_before >= self.not_after {
            return Err(ArtifactRule::ValidityWindow);
        }
        Ok(())
    }

    /// The canonical encoding: the magic string, the version byte, the fleet id
    /// (`u8` length), epoch, `not_before`, `not_after` (`u64` each), a `u8`
    /// replica count and each replica (id, `u8`-length datacenter, the three
    /// 32-byte keys), then a `u8` count and the ids of the voters, then of the
    /// learners.
    pub fn encode(&self) -> Result<Vec<u8>, ArtifactError> {
        self.validate()?;
        let mut w = Writer::with_capacity(64 + self.replicas.len() * 120);
        w.raw(MAGIC).u8(VERSION);
        w.short_text(&self.fleet_id, "fleet id")?;
        w.u64(self.epoch).u64(self.not_before).u64(self.not_after);
        w.length(Prefix::U8, REPLICAS_MAX, self.replicas.len(), "replicas")?;
        for r in &self.replicas {
            w.u64(r.id);
            w.short_text(&r.datacenter, "datacenter")?;
            w.raw(&r.response_key)
                .raw(&r.transport_key)
                .raw(&r.opaque_key);
        }
        for (ids, what) in [(&self.voters, "voters"), (&self.learners, "learners")] {
            w.length(Prefix::U8, REPLICAS_MAX, ids.len(), what)?;
            for &id in ids {
                w.u64(id);
            }
        }
        Ok(w.into_vec())
    }

    /// SHA-256 of the canonical encoding: what the witness and operator sign.
    pub fn digest(&self) -> Result<[u8; 32], ArtifactError> {
        Ok(Sha256::digest(self.encode()?).into())
    }

    /// Decodes a canonical encoding (and nothing else).
    pub fn decode(bytes: &[u8]) -> Result<Self, ArtifactError> {
        let mut r = Reader::new(bytes);
        if r.take(MAGIC.len(), "fleet artifact magic")? != MAGIC {
            return Err(ArtifactError::NotAnArtifact);
        }
        r.version(VERSION, "fleet artifact")?;
        let fleet_id = r.short_text("fleet id")?.to_owned();
        let epoch = r.u64("epoch")?;
        let not_before = r.u64("not_before")?;
        let not_after = r.u64("not_after")?;
        let n = usize::from(r.u8("replica count")?);
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            replicas.push(ReplicaKeys {
                id: r.u64("replica id")?,
                datacenter: r.short_text("datacenter")?.to_owned(),
                response_key: r.array("response key")?,
                transport_key: r.array("transport key")?,
                opaque_key: r.array("OPAQUE key")?,
            });
        }
        let mut lists = [Vec::new(), Vec::new()];
        for (list, what) in lists.iter_mut().zip(["voter", "learner"]) {
            let n = usize::from(r.u8(what)?);
            list.reserve(n);
            for _ in 0..n {
                list.push(r.u64(what)?);
            }
        }
        r.expect_empty("fleet artifact")?;
        let [voters, learners] = lists;
        let a = Self {
            fleet_id,
            epoch,
            replicas,
            voters,
            learners,
            not_before,
            not_after,
        };
        a.validate()?;
        Ok(a)
    }

    /// The replica `id`'s entry.
    pub fn replica(&self, id: ReplicaId) -> Option<&ReplicaKeys> {
        self.replicas.iter().find(|r| r.id == id)
    }
}
