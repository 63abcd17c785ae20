//! Fleet keys: one artifact per fleet epoch naming every replica's keys, the
//! quorum and a validity window, in a canonical, versioned binary encoding whose
//! SHA-256 is the digest the witness and the operator sign.
//!
//! The encoding is strict: big-endian integers, length-prefixed byte strings,
//! replicas in ascending id order with no duplicates, voters and learners sorted,
//! disjoint and drawn from the replicas, and no trailing bytes. So one artifact has
//! exactly one encoding and one digest, and a decoder never accepts two spellings
//! of the same fleet. `tests/fleet_keys.rs` pins the encoding with golden vectors.

use sha2::{Digest, Sha256};

use vaultfleet::wire::bytes::ByteReader;
use vaultfleet::ReplicaId;

pub mod evidence;

const MAGIC: &[u8] = b"vaultfleet/fleet-artifact";
/// The encoding's version.
pub const VERSION: u8 = 1;
const REPLICAS_MAX: usize = 255;
const TEXT_MAX: usize = 255;

/// One replica's entry in a fleet artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaKeys {
    /// Raft id.
    pub id: ReplicaId,
    /// Datacenter label.
    pub datacenter: String,
    /// Ed25519 key that signs the vault's replies.
    pub response_key: [u8; 32],
    /// X25519 key of the (planned) Noise transport.
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
#[error("fleet artifact: {0}")]
pub struct ArtifactError(pub String);

fn err(s: impl Into<String>) -> ArtifactError {
    ArtifactError(s.into())
}

fn strictly_ascending(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

impl FleetArtifact {
    /// Checks the rules the encoding relies on.
    pub fn validate(&self) -> Result<(), ArtifactError> {
        if self.fleet_id.is_empty() || self.fleet_id.len() > TEXT_MAX {
            return Err(err(format!("fleet id must be 1..={TEXT_MAX} bytes")));
        }
        if self.epoch == 0 {
            return Err(err("epochs start at 1"));
        }
        if self.replicas.is_empty() || self.replicas.len() > REPLICAS_MAX {
            return Err(err(format!("a fleet has 1..={REPLICAS_MAX} replicas")));
        }
        let ids: Vec<u64> = self.replicas.iter().map(|r| r.id).collect();
        if !strictly_ascending(&ids) || ids.contains(&0) {
            return Err(err("replica ids must be non-zero, unique and ascending"));
        }
        if self
            .replicas
            .iter()
            .any(|r| r.datacenter.is_empty() || r.datacenter.len() > TEXT_MAX)
        {
            return Err(err(format!(
                "datacenter labels must be 1..={TEXT_MAX} bytes"
            )));
        }
        if self.voters.is_empty()
            || !strictly_ascending(&self.voters)
            || !strictly_ascending(&self.learners)
        {
            return Err(err(
                "voters (at least one) and learners must be unique and ascending",
            ));
        }
        if self
            .voters
            .iter()
            .chain(&self.learners)
            .any(|id| !ids.contains(id))
            || self.voters.iter().any(|v| self.learners.contains(v))
        {
            return Err(err(
                "voters and learners are disjoint replicas of the artifact",
            ));
        }
        if self.not_before >= self.not_after {
            return Err(err("not_before must be before not_after"));
        }
        Ok(())
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, ArtifactError> {
        self.validate()?;
        let mut out = Vec::with_capacity(64 + self.replicas.len() * 120);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_text(&mut out, &self.fleet_id);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        out.push(self.replicas.len() as u8);
        for r in &self.replicas {
            out.extend_from_slice(&r.id.to_be_bytes());
            put_text(&mut out, &r.datacenter);
            out.extend_from_slice(&r.response_key);
            out.extend_from_slice(&r.transport_key);
            out.extend_from_slice(&r.opaque_key);
        }
        for ids in [&self.voters, &self.learners] {
            out.push(ids.len() as u8);
            for id in ids {
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        Ok(out)
    }

    /// SHA-256 of the canonical encoding: what the witness and operator sign.
    pub fn digest(&self) -> Result<[u8; 32], ArtifactError> {
        Ok(Sha256::digest(self.encode()?).into())
    }

    /// Decodes a canonical encoding (and nothing else).
    pub fn decode(bytes: &[u8]) -> Result<Self, ArtifactError> {
        let mut r = ByteReader::new(bytes);
        if r.take(MAGIC.len()).map_err(err)? != MAGIC {
            return Err(err("not a vaultfleet fleet artifact"));
        }
        let version = r.u8().map_err(err)?;
        if version != VERSION {
            return Err(err(format!(
                "encoding version {version}; this build reads {VERSION}"
            )));
        }
        let fleet_id = r.short_text().map_err(err)?;
        let epoch = r.u64().map_err(err)?;
        let not_before = r.u64().map_err(err)?;
        let not_after = r.u64().map_err(err)?;
        let n = r.u8().map_err(err)? as usize;
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            replicas.push(ReplicaKeys {
                id: r.u64().map_err(err)?,
                datacenter: r.short_text().map_err(err)?,
                response_key: r.array().map_err(err)?,
                transport_key: r.array().map_err(err)?,
                opaque_key: r.array().map_err(err)?,
            });
        }
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = r.u8().map_err(err)? as usize;
            for _ in 0..n {
                list.push(r.u64().map_err(err)?);
            }
        }
        if !r.is_empty() {
            return Err(err("trailing bytes after the artifact"));
        }
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

fn put_text(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}
