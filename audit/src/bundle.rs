//! The validation bundle and the client's check of it.
//!
//! A bundle is everything a client with no fleet keys needs to trust a fleet:
//! the fleet artifact, the witness's signature on (namespace, time, epoch,
//! digest), the operator's countersignature on exactly that witness signature,
//! and an inclusion proof of the witness's statement in a checkpoint of the
//! witness's log. [`FleetVerifier`], pinned only to the witness's and the
//! operator's public keys, checks every link in order and names the first one
//! that breaks. It never accepts an epoch older than the one before the newest it
//! has accepted (the previous fleet keeps serving during a rotation), nor one
//! retired early ([`EpochRetirement`]); it holds every witness key to its
//! validity window at the verifier's own time, not only at the time a statement
//! claims; it keeps the newest checkpoint it accepted and refuses one that a
//! [`ConsistencyProof`] does not show to be the same log; and it can persist all
//! of that. Pinned to independent cosigners too
//! ([`FleetVerifier::require_cosigners`]), it also wants k of their C2SP
//! `cosignature/v1` lines on the checkpoint (<https://c2sp.org/tlog-cosignature>),
//! so a log showing this client a split view must fool k witnesses as well.

use std::path::{Path, PathBuf};

use crate::consistency::ConsistencyProof;
use crate::fleet::{ArtifactError, FleetArtifact};
use crate::merkle::{leaf_hash, verify_consistency, verify_inclusion, Hash, ProofError};
use crate::note::{Checkpoint, NoteError, NoteVerifier, SignedNote};
use crate::retirement::EpochRetirement;
use crate::witness::{leaf_bytes, verify_countersignature, Statement, Witnessed, NAME_BYTES_MAX};
use sha2::Digest as _;
use vaultfleet::codec::{DecodeError, EncodeError, Reader, Writer};
use vaultfleet::hsm::verify_signature;
use vaultfleet::ReplicaId;

const MAGIC: &[u8] = b"vaultfleet/bundle/v1";
/// Longest byte field of a bundle (the artifact, the checkpoint).
pub const FIELD_BYTES_MAX: usize = 1 << 20;
/// Most hashes in an inclusion proof (a proof in a tree of 2^64 leaves has 64).
pub const INCLUSION_HASHES_MAX: usize = 64;
/// Most cosigners a verifier pins.
pub const COSIGNERS_MAX: usize = 32;

/// A fleet's validation bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The fleet artifact's canonical encoding.
    pub artifact: Vec<u8>,
    /// The digest the witness signed (must be the artifact's).
    pub digest: [u8; 32],
    /// The operator's log.
    pub namespace: String,
    /// When the witness signed.
    pub timestamp: u64,
    /// The epoch the witness signed.
    pub epoch: u64,
    /// The witness key that signed.
    pub witness_key: String,
    /// The witness's signature.
    pub witness_signature: [u8; 64],
    /// The operator's countersignature on the witness's signature.
    pub countersignature: [u8; 64],
    /// The statement's index in the witness's log.
    pub leaf_index: u64,
    /// Its inclusion proof against the checkpoint.
    pub inclusion: Vec<Hash>,
    /// The witness-signed checkpoint (a C2SP signed note).
    pub checkpoint: String,
}

/// The first broken link of a bundle. Every one means: refuse the session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bytes do not start with the bundle's magic string.
    #[error("not a vaultfleet bundle (v1): its magic bytes differ")]
    NotABundle,
    /// The bytes do not decode as a bundle.
    #[error("malformed bundle: {0}")]
    Malformed(#[from] DecodeError),
    /// A field of the bundle is too long to have been signed.
    #[error("the bundle's statement does not encode: {0}")]
    Encode(#[from] EncodeError),
    /// The artifact does not decode.
    #[error("fleet artifact refused: {0}")]
    Artifact(#[source] ArtifactError),
    /// The artifact's digest is not the digest that was signed.
    #[error("the fleet artifact's digest is not the one the witness signed")]
    DigestMismatch,
    /// The bundle is for another operator log.
    #[error("bundle for namespace {got:?}, this client trusts {want:?}")]
    Namespace {
        /// In the bundle.
        got: String,
        /// Pinned.
        want: String,
    },
    /// Signed by a witness key the client does not pin.
    #[error("witness key {0:?} is not pinned")]
    UnknownWitnessKey(String),
    /// The witness key signed before its `not_before`.
    #[error("witness key {key:?} signed at {timestamp}, before its not_before {not_before}")]
    WitnessKeyNotYetValid {
        /// The key.
        key: String,
        /// When it signed.
        timestamp: u64,
        /// When it became valid.
        not_before: u64,
    },
    /// The witness key signed after its successor took over.
    #[error("witness key {key:?} signed at {timestamp}, after it retired at {retired}")]
    WitnessKeyRetired {
        /// The key.
        key: String,
        /// When it signed.
        timestamp: u64,
        /// When the next key took over.
        retired: u64,
    },
    /// The witness key's successor started before the verifier's own time: the
    /// key is retired, whatever date its statement claims (a stolen retired key
    /// backdating a statement).
    #[error("witness key {key:?} retired at {retired}; it is {now} now")]
    WitnessKeyRetiredAt {
        /// The key.
        key: String,
        /// When the next key took over.
        retired: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The witness key's `not_before` is still in the verifier's future: it may
    /// not sign yet, whatever date its statement claims.
    #[error("witness key {key:?} is valid from {not_before}; it is {now} now")]
    WitnessKeyNotYetValidAt {
        /// The key.
        key: String,
        /// When it becomes valid.
        not_before: u64,
        /// The verifier's time.
        now: u64,
    },
    /// The checkpoint is signed only by pinned keys that are not valid at the
    /// verifier's time (retired, or not yet valid).
    #[error("the checkpoint is signed by witness key {key:?}, valid in [{not_before}, {}), not at {now}", retired.map_or_else(|| "-".to_string(), |r| r.to_string()))]
    CheckpointKeyNotCurrent {
        /// The key that signed it.
        key: String,
        /// When it became valid.
        not_before: u64,
        /// When its successor took over, if one is pinned.
        retired: Option<u64>,
        /// The verifier's time.
        now: u64,
    },
    /// The epoch was retired early by a witnessed, countersigned retirement.
    #[error("epoch {epoch} is retired (every epoch through {retired_through} was retired early)")]
    EpochRetired {
        /// In the bundle.
        epoch: u64,
        /// The newest retired epoch.
        retired_through: u64,
    },
    /// An epoch retirement does not decode.
    #[error("malformed epoch retirement: {0}")]
    RetirementMalformed(#[source] DecodeError),
    /// The verifier requires consistency proofs and the bundle's checkpoint
    /// differs in size from the last one it accepted, with no proof.
    #[error("no consistency proof between the last accepted checkpoint (size {from}) and this one (size {to})")]
    NoConsistencyProof {
        /// The smaller size.
        from: u64,
        /// The larger size.
        to: u64,
    },
    /// The consistency proof does not decode.
    #[error("malformed consistency proof: {0}")]
    ConsistencyProofMalformed(#[source] DecodeError),
    /// The consistency proof is between other sizes than the two checkpoints'.
    #[error("the consistency proof is from size {got_from} to {got_to}, sizes {from} to {to} were needed")]
    ConsistencyProofSizes {
        /// The proof's smaller size.
        got_from: u64,
        /// The proof's larger size.
        got_to: u64,
        /// The smaller checkpoint's size.
        from: u64,
        /// The larger checkpoint's size.
        to: u64,
    },
    /// The bundle's checkpoint and the last one accepted are not two sizes of
    /// one append-only log: the witness's log forked (or the proof is wrong).
    #[error("the checkpoints of sizes {from} and {to} are not one log: {source}")]
    NotAnExtension {
        /// The smaller size.
        from: u64,
        /// The larger size.
        to: u64,
        /// Why the proof fails.
        #[source]
        source: ProofError,
    },
    /// Another bundle moved the verifier's newest checkpoint between this one's
    /// check and its acceptance: check it again.
    #[error("checked against the checkpoint of size {checked_against:?}, the newest is now size {newest}: check again")]
    StaleCheck {
        /// The newest checkpoint's size at the check.
        checked_against: Option<u64>,
        /// The newest checkpoint's size now.
        newest: u64,
    },
    /// Two checkpoints of the same size with different roots: the witness's
    /// log forked.
    #[error("the witness log forked: two different roots for size {size}")]
    ForkedLog {
        /// The size.
        size: u64,
    },
    /// The witness signature does not verify.
    #[error("the witness signature does not verify")]
    WitnessSignature,
    /// The operator's countersignature is not on this witness signature.
    #[error("the operator's countersignature does not verify over this witness signature")]
    Countersignature,
    /// The checkpoint is not a well-formed signed note or checkpoint, or the
    /// witness key's name cannot sign notes.
    #[error("checkpoint refused: {0}")]
    Checkpoint(#[source] NoteError),
    /// The checkpoint carries no valid signature by a pinned witness key.
    #[error("checkpoint refused: not signed by a pinned witness key")]
    CheckpointUnsigned,
    /// The checkpoint is of another log.
    #[error("checkpoint of log {got:?}, this client trusts {want:?}")]
    CheckpointOrigin {
        /// The checkpoint's origin line.
        got: String,
        /// The pinned namespace.
        want: String,
    },
    /// Fewer pinned cosigners than required cosigned the checkpoint
    /// ([`FleetVerifier::require_cosigners`]). A cosignature counts once per
    /// cosigner, and only with a non-zero timestamp.
    #[error("the checkpoint carries cosignatures by {have} of the {need} pinned cosigners required; missing: {}", missing.join(", "))]
    TooFewCosignatures {
        /// Distinct pinned cosigners whose cosignature verified.
        have: usize,
        /// How many are required.
        need: usize,
        /// The pinned cosigners with no cosignature that counts, in pin order.
        missing: Vec<String>,
    },
    /// A signature line with a pinned cosigner's name and key ID does not
    /// verify: the whole checkpoint note is refused (C2SP signed-note: "If a
    /// signature from a known key fails to verify, clients SHOULD reject the
    /// whole note").
    #[error("the cosignature by pinned cosigner {cosigner:?} does not verify: the checkpoint is refused")]
    BadCosignature {
        /// The cosigner.
        cosigner: String,
        /// Why it does not verify.
        #[source]
        source: NoteError,
    },
    /// The statement is not in the checkpointed log.
    #[error("the inclusion proof does not place the statement in the checkpoint: {0}")]
    Inclusion(#[source] ProofError),
    /// The artifact's epoch is not the witnessed epoch.
    #[error("artifact epoch {artifact} differs from the witnessed epoch {witnessed}")]
    EpochMismatch {
        /// In the artifact.
        artifact: u64,
        /// Witnessed.
        witnessed: u64,
    },
    /// An older fleet than the client already moved past.
    #[error("epoch {got} is older than allowed (newest accepted {newest}; the previous epoch still serves)")]
    EpochRollback {
        /// In the bundle.
        got: u64,
        /// Newest accepted.
        newest: u64,
    },
    /// Another digest for an epoch the client already accepted.
    #[error("epoch {0} was accepted with another digest: the log equivocates")]
    Equivocation(u64),
    /// Outside the artifact's validity window.
    #[error("the fleet artifact is valid in [{not_before}, {not_after}), not at {now}")]
    Expired {
        /// Valid from.
        not_before: u64,
        /// Valid until.
        not_after: u64,
        /// Now.
        now: u64,
    },
    /// The answering replica is not in the fleet.
    #[error("replica {0} is not in the fleet artifact")]
    ReplicaNotInBundle(ReplicaId),
    /// The reply is not signed by that replica's response key.
    #[error("the reply is not signed by replica {0}'s response key from the bundle")]
    ReplySignature(ReplicaId),
    /// The verifier's state file could not be read or written.
    #[error("verifier state {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// What the file system reported.
        #[source]
        source: std::io::Error,
    },
    /// A line of the verifier's state file does not parse.
    #[error("verifier state {path}: line {line} is unreadable; delete the file only if you trust the next bundle")]
    StateUnreadable {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
    },
}

impl Bundle {
    /// Assembles a bundle from a witnessed artifact, the operator's
    /// countersignature and a checkpoint with the inclusion proof.
    pub fn assemble(
        artifact: Vec<u8>,
        witnessed: &Witnessed,
        countersignature: [u8; 64],
        inclusion: Vec<Hash>,
        checkpoint: &SignedNote,
    ) -> Self {
        Self {
            artifact,
            digest: witnessed.statement.digest,
            namespace: witnessed.statement.namespace.clone(),
            timestamp: witnessed.statement.timestamp,
            epoch: witnessed.statement.epoch,
            witness_key: witnessed.key.clone(),
            witness_signature: witnessed.signature,
            countersignature,
            leaf_index: witnessed.leaf_index,
            inclusion,
            checkpoint: checkpoint.encode(),
        }
    }

    fn statement(&self) -> Statement {
        Statement {
            namespace: self.namespace.clone(),
            timestamp: self.timestamp,
            epoch: self.epoch,
            digest: self.digest,
        }
    }

    /// The canonical encoding: the magic string, the artifact (`u32` length),
    /// the digest, the namespace (`u32` length), timestamp and epoch (`u64`),
    /// the witness key's name (`u32` length), the witness signature, the
    /// countersignature, the leaf index (`u64`), a `u32` count of inclusion
    /// hashes and the hashes, and the checkpoint note (`u32` length).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::from_vec(MAGIC.to_vec());
        w.bytes(FIELD_BYTES_MAX, &self.artifact, "bundle artifact")?
            .raw(&self.digest)
            .text(NAME_BYTES_MAX, &self.namespace, "bundle namespace")?
            .u64(self.timestamp)
            .u64(self.epoch)
            .text(NAME_BYTES_MAX, &self.witness_key, "bundle witness key")?
            .raw(&self.witness_signature)
            .raw(&self.countersignature)
            .u64(self.leaf_index)
            .count(
                INCLUSION_HASHES_MAX,
                self.inclusion.len(),
                "inclusion proof",
            )?;
        for h in &self.inclusion {
            w.raw(h);
        }
        w.text(FIELD_BYTES_MAX, &self.checkpoint, "bundle checkpoint")?;
        Ok(w.into_vec())
    }

    /// Decodes [`Bundle::encode`]'s output; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        let mut r = Reader::new(bytes);
        if r.take(MAGIC.len(), "bundle magic")? != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let artifact = r.bytes(FIELD_BYTES_MAX, "bundle artifact")?.to_vec();
        let digest = r.array("bundle digest")?;
        // A witness signs names of at most NAME_BYTES_MAX bytes: a longer one
        // was never signed.
        let namespace = r.text(NAME_BYTES_MAX, "bundle namespace")?.to_owned();
        let timestamp = r.u64("bundle timestamp")?;
        let epoch = r.u64("bundle epoch")?;
        let witness_key = r.text(NAME_BYTES_MAX, "bundle witness key")?.to_owned();
        let witness_signature = r.array("witness signature")?;
        let countersignature = r.array("countersignature")?;
        let leaf_index = r.u64("leaf index")?;
        let n = r.count(INCLUSION_HASHES_MAX, "inclusion proof")?;
        let mut inclusion = Vec::with_capacity(n);
        for _ in 0..n {
            inclusion.push(r.array("inclusion proof hash")?);
        }
        let checkpoint = r.text(FIELD_BYTES_MAX, "bundle checkpoint")?.to_owned();
        r.expect_empty("bundle")?;
        Ok(Self {
            artifact,
            digest,
            namespace,
            timestamp,
            epoch,
            witness_key,
            witness_signature,
            countersignature,
            leaf_index,
            inclusion,
            checkpoint,
        })
    }
}

/// A pinned witness key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKey {
    /// Its name.
    pub name: String,
    /// Its Ed25519 public key.
    pub public_key: [u8; 32],
    /// When it may start signing. It retires when the next pinned key's
    /// `not_before` arrives.
    pub not_before: u64,
}

/// A pinned cosigner: an independent witness (C2SP tlog-witness) whose
/// `cosignature/v1` line on a checkpoint states that, at its timestamp, this
/// was the largest checkpoint of the log it had seen, consistent with all the
/// earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    /// Its key name (C2SP recommends a schema-less URL, e.g.
    /// `witness.example.com/w1`).
    pub name: String,
    /// Its Ed25519 public key.
    pub public_key: [u8; 32],
}

/// Checks a set of cosigner pins as [`FleetVerifier::require_cosigners`] does:
/// `need` from 1 to their number, at most [`COSIGNERS_MAX`], names valid note
/// key names and unique, keys unique and none of them one of `witness_keys`.
/// Returns their verifiers. A pins file is checked with it when read, so
/// every reader of the file (not only a verifier) gets the same rules.
pub fn check_cosigner_pins(
    need: usize,
    cosigners: &[CosignerKey],
    witness_keys: &[WitnessKey],
) -> Result<Vec<NoteVerifier>, CosignerPinError> {
    if cosigners.len() > COSIGNERS_MAX {
        return Err(CosignerPinError::TooMany {
            count: cosigners.len(),
            max: COSIGNERS_MAX,
        });
    }
    if need == 0 || need > cosigners.len() {
        return Err(CosignerPinError::Threshold {
            need,
            pinned: cosigners.len(),
        });
    }
    let mut verifiers: Vec<NoteVerifier> = Vec::with_capacity(cosigners.len());
    for c in cosigners {
        let v = NoteVerifier::cosignature(&c.name, c.public_key).map_err(|source| {
            CosignerPinError::Name {
                name: c.name.clone(),
                source,
            }
        })?;
        if verifiers.iter().any(|p| p.name == c.name) {
            return Err(CosignerPinError::DuplicateName(c.name.clone()));
        }
        // C2SP tlog-cosignature: "The Ed25519 signed message format doesn't
        // commit to the cosigner name, so the same public key can't be used
        // across multiple cosigners."
        if let Some(p) = verifiers.iter().find(|p| p.public_key == c.public_key) {
            return Err(CosignerPinError::DuplicateKey {
                first: p.name.clone(),
                second: c.name.clone(),
            });
        }
        if let Some(w) = witness_keys.iter().find(|w| w.public_key == c.public_key) {
            return Err(CosignerPinError::WitnessKey {
                cosigner: c.name.clone(),
                witness: w.name.clone(),
            });
        }
        verifiers.push(v);
    }
    Ok(verifiers)
}

/// A set of cosigner pins [`FleetVerifier::require_cosigners`] refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CosignerPinError {
    /// The number required is 0 or more than the cosigners pinned.
    #[error("{need} cosignatures required of {pinned} pinned cosigners: require 1 to {pinned} (at least one cosigner pinned)")]
    Threshold {
        /// Cosignatures required.
        need: usize,
        /// Cosigners pinned.
        pinned: usize,
    },
    /// More than [`COSIGNERS_MAX`] cosigners.
    #[error("{count} cosigners pinned, at most {max}")]
    TooMany {
        /// How many.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// The name cannot be a note key name.
    #[error("cosigner name {name:?} cannot sign notes")]
    Name {
        /// The name.
        name: String,
        /// What is wrong with it.
        #[source]
        source: NoteError,
    },
    /// Two cosigners share a name.
    #[error("two cosigners are named {0:?}: names are unique")]
    DuplicateName(String),
    /// Two cosigners share a public key: a `cosignature/v1` does not commit to
    /// the name, so one key would count twice.
    #[error(
        "cosigners {first:?} and {second:?} have the same public key: each cosigner has its own"
    )]
    DuplicateKey {
        /// The first holder.
        first: String,
        /// The second.
        second: String,
    },
    /// A cosigner's key is a pinned witness key: the log's own witness is no
    /// independent cosigner.
    #[error("cosigner {cosigner:?} has the public key of witness key {witness:?}: cosigners are independent of the log")]
    WitnessKey {
        /// The cosigner.
        cosigner: String,
        /// The witness key.
        witness: String,
    },
}

/// The client's check of bundles, pinned to the witness's and the operator's
/// keys, and optionally to k of n independent cosigners.
#[derive(Debug, Clone)]
pub struct FleetVerifier {
    namespace: String,
    witness_keys: Vec<WitnessKey>,
    operator_key: [u8; 32],
    /// Pinned cosigners (`cosignature/v1` keys), in pin order.
    cosigners: Vec<NoteVerifier>,
    /// How many of them must have cosigned a checkpoint (0: none).
    cosigners_required: usize,
    current: Option<(u64, [u8; 32])>,
    previous: Option<(u64, [u8; 32])>,
    /// Checkpoints (size, root) accepted so far, ascending: a second root for a
    /// size is a forked log, and the last one is the newest (the "head") every
    /// later checkpoint must be consistent with.
    checkpoints: Vec<(u64, Hash)>,
    /// Every epoch up to this one was retired early.
    retired_through: Option<u64>,
    /// Refuse a checkpoint of another size than the head's without a proof.
    require_consistency: bool,
    /// The last bundle accepted.
    last: Option<Accepted>,
    state: Option<PathBuf>,
}

/// Checkpoints a verifier remembers to catch a forked log.
const CHECKPOINTS_KEPT: usize = 64;

/// A bundle that passed [`FleetVerifier::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The fleet.
    pub artifact: FleetArtifact,
    /// Its epoch.
    pub epoch: u64,
    /// Its digest.
    pub digest: [u8; 32],
    /// The checkpoint (size, root) it was proven against.
    pub checkpoint: (u64, Hash),
    /// The witness key that signed the statement.
    pub witness_key: String,
    /// The pinned witness key whose signature on the checkpoint verified.
    pub checkpoint_key: String,
    /// The pinned cosigners whose cosignature on the checkpoint counted, in
    /// pin order (empty when none are pinned).
    pub cosigners: Vec<String>,
    /// The verifier's newest checkpoint when the bundle was checked: the
    /// bundle's checkpoint was proven consistent with it.
    pub extends: Option<(u64, Hash)>,
    /// SHA-256 of the bundle's bytes: the same bytes seen again need only the
    /// checks that depend on the time, the replica and the verifier's epochs.
    pub bundle_hash: [u8; 32],
}

impl FleetVerifier {
    /// A verifier for `namespace`, trusting `witness_keys` and `operator_key`.
    ///
    /// It accepts a checkpoint of a new size without a consistency proof (only
    /// equal sizes are compared) until [`FleetVerifier::require_consistency_proofs`]
    /// is called: the vault's replies do not carry proofs yet.
    pub fn new(namespace: &str, witness_keys: Vec<WitnessKey>, operator_key: [u8; 32]) -> Self {
        Self {
            namespace: namespace.to_string(),
            witness_keys,
            operator_key,
            cosigners: Vec::new(),
            cosigners_required: 0,
            current: None,
            previous: None,
            checkpoints: Vec::new(),
            retired_through: None,
            require_consistency: false,
            last: None,
            state: None,
        }
    }

    /// Refuses every checkpoint whose size differs from the newest accepted one
    /// unless a consistency proof shows both are one log
    /// ([`BundleError::NoConsistencyProof`]).
    pub fn require_consistency_proofs(mut self) -> Self {
        self.require_consistency = true;
        self
    }

    /// Refuses every checkpoint that fewer than `need` of `cosigners` cosigned
    /// ([`BundleError::TooFewCosignatures`]). A cosignature is a C2SP
    /// `cosignature/v1` line on the checkpoint note, by a pinned cosigner's name
    /// and key ID, with a non-zero timestamp (tlog-witness: "the timestamp MUST
    /// NOT be zero"); lines by other keys are ignored, and a line by a pinned
    /// cosigner that does not verify refuses the bundle
    /// ([`BundleError::BadCosignature`]). Without this call no cosignature is
    /// needed.
    ///
    /// `need` must be 1 to the number of cosigners (at most [`COSIGNERS_MAX`]),
    /// whose names must be valid note key names and unique, and whose keys
    /// unique and none a pinned witness key. The pins are not persisted: they
    /// come from the configuration each time.
    pub fn require_cosigners(
        mut self,
        need: usize,
        cosigners: Vec<CosignerKey>,
    ) -> Result<Self, CosignerPinError> {
        let verifiers = check_cosigner_pins(need, &cosigners, &self.witness_keys)?;
        self.cosigners = verifiers;
        self.cosigners_required = need;
        // The bundle last accepted was checked without these pins: its bytes
        // seen again are checked in full.
        self.last = None;
        Ok(self)
    }

    /// How many pinned cosigners must have cosigned a checkpoint (0: none).
    pub fn cosigners_required(&self) -> usize {
        self.cosigners_required
    }

    /// Keeps the newest accepted epoch (and its digest), the checkpoints and
    /// any early retirement in `path`, loading them now.
    pub fn persist_to(mut self, path: impl AsRef<Path>) -> Result<Self, BundleError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let hash = |d: &str| -> Option<[u8; 32]> {
                    let b = (0..32)
                        .map(|i| u8::from_str_radix(d.get(2 * i..2 * i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()?;
                    <[u8; 32]>::try_from(b.as_slice()).ok()
                };
                for (n, line) in text.lines().enumerate() {
                    let f: Vec<&str> = line.split(' ').collect();
                    let unreadable = || BundleError::StateUnreadable {
                        path: path.clone(),
                        line: n + 1,
                    };
                    if let ["retired", e] = f.as_slice() {
                        let e = e.parse::<u64>().map_err(|_| unreadable())?;
                        self.retired_through = self.retired_through.max(Some(e));
                        continue;
                    }
                    let parsed = match f.as_slice() {
                        [tag, n, d] => n.parse::<u64>().ok().zip(hash(d)).map(|v| (*tag, v)),
                        _ => None,
                    };
                    match parsed {
                        Some(("current", v)) => self.current = Some(v),
                        Some(("previous", v)) => self.previous = Some(v),
                        Some(("checkpoint", v)) => self.checkpoints.push(v),
                        _ => return Err(unreadable()),
                    }
                }
                self.checkpoints.sort_unstable();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(BundleError::State { path, source }),
        }
        self.state = Some(path);
        Ok(self)
    }

    /// The newest epoch accepted.
    pub fn newest_epoch(&self) -> Option<u64> {
        self.current.map(|(e, _)| e)
    }

    /// The newest checkpoint (size, root) accepted: a request carries its size,
    /// and the reply a consistency proof from it to the bundle's checkpoint.
    pub fn last_checkpoint(&self) -> Option<(u64, Hash)> {
        self.checkpoints.last().copied()
    }

    /// The size of [`FleetVerifier::last_checkpoint`].
    pub fn last_checkpoint_size(&self) -> Option<u64> {
        self.last_checkpoint().map(|(size, _)| size)
    }

    /// The newest epoch retired early, if any.
    pub fn retired_through(&self) -> Option<u64> {
        self.retired_through
    }

    /// Checks `bundle` for a reply from `replica` at time `now` and, if every
    /// link holds, accepts it (moves the verifier forward). Use
    /// [`FleetVerifier::check`] and [`FleetVerifier::accept`] separately to accept
    /// only once the reply the bundle came with has verified too.
    pub fn verify(
        &mut self,
        bundle: &[u8],
        now: u64,
        replica: ReplicaId,
    ) -> Result<FleetArtifact, BundleError> {
        self.verify_with_proof(bundle, None, now, replica)
    }

    /// [`FleetVerifier::verify`] with the consistency proof the reply carried.
    pub fn verify_with_proof(
        &mut self,
        bundle: &[u8],
        consistency: Option<&[u8]>,
        now: u64,
        replica: ReplicaId,
    ) -> Result<FleetArtifact, BundleError> {
        let accepted = self.check_with_proof(bundle, consistency, now, replica)?;
        self.accept(&accepted)?;
        Ok(accepted.artifact)
    }

    /// [`FleetVerifier::check_with_proof`] without a consistency proof.
    pub fn check(
        &self,
        bundle: &[u8],
        now: u64,
        replica: ReplicaId,
    ) -> Result<Accepted, BundleError> {
        self.check_with_proof(bundle, None, now, replica)
    }

    fn key(&self, name: &str) -> Result<&WitnessKey, BundleError> {
        self.witness_keys
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| BundleError::UnknownWitnessKey(name.to_string()))
    }

    /// When `key` retires: when the next pinned key starts.
    fn retirement(&self, key: &WitnessKey) -> Option<u64> {
        self.witness_keys
            .iter()
            .map(|k| k.not_before)
            .filter(|&nb| nb > key.not_before)
            .min()
    }

    fn valid_at(&self, key: &WitnessKey, t: u64) -> bool {
        t >= key.not_before && self.retirement(key).is_none_or(|r| t < r)
    }

    /// `key` at the time its statement claims: not before its `not_before`,
    /// and not once its successor started.
    fn key_at_claimed_time(&self, key: &WitnessKey, timestamp: u64) -> Result<(), BundleError> {
        if timestamp < key.not_before {
            return Err(BundleError::WitnessKeyNotYetValid {
                key: key.name.clone(),
                timestamp,
                not_before: key.not_before,
            });
        }
        // A key retires when the next one starts: a statement dated after that is
        // a retired (possibly stolen) key at work.
        if let Some(retired) = self.retirement(key).filter(|&r| timestamp >= r) {
            return Err(BundleError::WitnessKeyRetired {
                key: key.name.clone(),
                timestamp,
                retired,
            });
        }
        Ok(())
    }

    /// `key` at the verifier's own time.
    fn key_window_now(&self, key: &WitnessKey, now: u64) -> Result<(), BundleError> {
        if now < key.not_before {
            return Err(BundleError::WitnessKeyNotYetValidAt {
                key: key.name.clone(),
                not_before: key.not_before,
                now,
            });
        }
        if let Some(retired) = self.retirement(key).filter(|&r| now >= r) {
            return Err(BundleError::WitnessKeyRetiredAt {
                key: key.name.clone(),
                retired,
                now,
            });
        }
        Ok(())
    }

    /// The checkpoint's signer at the verifier's time.
    fn checkpoint_key_window(&self, name: &str, now: u64) -> Result<(), BundleError> {
        let key = self.key(name)?;
        if self.valid_at(key, now) {
            return Ok(());
        }
        Err(BundleError::CheckpointKeyNotCurrent {
            key: key.name.clone(),
            not_before: key.not_before,
            retired: self.retirement(key),
            now,
        })
    }

    /// The pinned key that signed `note`, preferring one valid at `now`.
    fn checkpoint_signer(&self, note: &SignedNote, now: u64) -> Result<String, BundleError> {
        let signers: Vec<&WitnessKey> = self
            .witness_keys
            .iter()
            .filter(|k| {
                NoteVerifier::ed25519(&k.name, k.public_key).is_ok_and(|v| v.verify(note).is_ok())
            })
            .collect();
        signers
            .iter()
            .find(|k| self.valid_at(k, now))
            .or(signers.first())
            .map(|k| k.name.clone())
            .ok_or(BundleError::CheckpointUnsigned)
    }

    /// The pinned cosigners that cosigned `note`, in pin order; refuses the
    /// note if fewer than required did, or if any line by a pinned cosigner's
    /// name and key ID does not verify ([`cosigned_by`]).
    fn cosigned_by(&self, note: &SignedNote) -> Result<Vec<String>, BundleError> {
        if self.cosigners.is_empty() {
            return Ok(Vec::new());
        }
        let signed = cosigned_by(note, &self.cosigners)?;
        if signed.len() < self.cosigners_required {
            let missing = self
                .cosigners
                .iter()
                .filter(|c| !signed.contains(&c.name))
                .map(|c| c.name.clone())
                .collect();
            return Err(BundleError::TooFewCosignatures {
                have: signed.len(),
                need: self.cosigners_required,
                missing,
            });
        }
        Ok(signed)
    }

    /// Whether the checkpoint (`size`, `root`) and the newest accepted one are
    /// one log: equal, or linked by `consistency` (in whichever order their
    /// sizes fall). With no newest one yet, the first checkpoint is trusted as
    /// it comes (its signature and the inclusion proof still hold).
    fn extends_head(
        &self,
        size: u64,
        root: &Hash,
        consistency: Option<&[u8]>,
    ) -> Result<(), BundleError> {
        let Some((head_size, head_root)) = self.last_checkpoint() else {
            return Ok(());
        };
        if (size, *root) == (head_size, head_root) {
            return Ok(());
        }
        let (from, to, from_root, to_root) = if size >= head_size {
            (head_size, size, head_root, *root)
        } else {
            (size, head_size, *root, head_root)
        };
        let Some(bytes) = consistency else {
            return if self.require_consistency {
                Err(BundleError::NoConsistencyProof { from, to })
            } else {
                Ok(())
            };
        };
        let proof =
            ConsistencyProof::decode(bytes).map_err(BundleError::ConsistencyProofMalformed)?;
        if (proof.from_size, proof.to_size) != (from, to) {
            return Err(BundleError::ConsistencyProofSizes {
                got_from: proof.from_size,
                got_to: proof.to_size,
                from,
                to,
            });
        }
        verify_consistency(from, to, &proof.hashes, &from_root, &to_root)
            .map_err(|source| BundleError::NotAnExtension { from, to, source })
    }

    /// Checks `bundle` without changing the verifier, in this order: decoding,
    /// the artifact's digest, the namespace, the witness key and its validity
    /// window at the statement's time, the witness signature, the
    /// countersignature, the checkpoint's signature, its cosignatures (if
    /// cosigners are pinned), its agreement with every
    /// checkpoint seen before and its consistency (`consistency`, the proof the
    /// reply carried) with the newest one, the inclusion proof, the epoch
    /// (never back, never retired), the artifact's validity window, both witness
    /// keys at the verifier's time `now`, and the replica.
    pub fn check_with_proof(
        &self,
        bundle: &[u8],
        consistency: Option<&[u8]>,
        now: u64,
        replica: ReplicaId,
    ) -> Result<Accepted, BundleError> {
        let bundle_hash: [u8; 32] = sha2::Sha256::digest(bundle).into();
        if let Some(last) = self.last.as_ref().filter(|l| l.bundle_hash == bundle_hash) {
            // Every signature and proof of these exact bytes held already, and
            // its checkpoint is consistent with the newest (it is the newest, or
            // was proven a prefix of it, which has not moved since).
            return self.admit(last.clone(), now, replica);
        }
        let b = Bundle::decode(bundle)?;
        let artifact = FleetArtifact::decode(&b.artifact).map_err(BundleError::Artifact)?;
        let digest = artifact.digest().map_err(BundleError::Artifact)?;
        if digest != b.digest {
            return Err(BundleError::DigestMismatch);
        }
        if b.namespace != self.namespace {
            return Err(BundleError::Namespace {
                got: b.namespace.clone(),
                want: self.namespace.clone(),
            });
        }
        let key = self.key(&b.witness_key)?;
        // The key at the statement's own time here; at the verifier's time (a
        // backdated statement of a retired key) in `admit`.
        self.key_at_claimed_time(key, b.timestamp)?;
        let statement = b.statement();
        if !verify_signature(
            &key.public_key,
            &statement.signed_bytes()?,
            &b.witness_signature,
        ) {
            return Err(BundleError::WitnessSignature);
        }
        if !verify_countersignature(
            &self.operator_key,
            &b.witness_key,
            &b.witness_signature,
            &b.countersignature,
        ) {
            return Err(BundleError::Countersignature);
        }
        let note = SignedNote::parse(&b.checkpoint).map_err(BundleError::Checkpoint)?;
        // The statement's key name must be able to sign notes at all.
        NoteVerifier::ed25519(&key.name, key.public_key).map_err(BundleError::Checkpoint)?;
        // Any pinned witness key may have signed it; its validity at `now` is
        // checked with the other time-dependent checks.
        let checkpoint_key = self.checkpoint_signer(&note, now)?;
        let cosigners = self.cosigned_by(&note)?;
        let checkpoint = Checkpoint::parse(&note.text).map_err(BundleError::Checkpoint)?;
        if checkpoint.origin != self.namespace {
            return Err(BundleError::CheckpointOrigin {
                got: checkpoint.origin,
                want: self.namespace.clone(),
            });
        }
        if let Some((_, root)) = self
            .checkpoints
            .iter()
            .find(|(size, _)| *size == checkpoint.size)
        {
            if *root != checkpoint.root {
                return Err(BundleError::ForkedLog {
                    size: checkpoint.size,
                });
            }
        }
        self.extends_head(checkpoint.size, &checkpoint.root, consistency)?;
        let leaf = leaf_hash(&leaf_bytes(
            &statement,
            &b.witness_key,
            &b.witness_signature,
        )?);
        verify_inclusion(
            &leaf,
            b.leaf_index,
            checkpoint.size,
            &b.inclusion,
            &checkpoint.root,
        )
        .map_err(BundleError::Inclusion)?;
        if artifact.epoch != b.epoch {
            return Err(BundleError::EpochMismatch {
                artifact: artifact.epoch,
                witnessed: b.epoch,
            });
        }
        self.admit(
            Accepted {
                artifact,
                epoch: b.epoch,
                digest,
                checkpoint: (checkpoint.size, checkpoint.root),
                witness_key: b.witness_key,
                checkpoint_key,
                cosigners,
                extends: None,
                bundle_hash,
            },
            now,
            replica,
        )
    }

    /// The checks of a verified bundle that depend on the verifier's epochs and
    /// checkpoints, the time and the answering replica.
    fn admit(
        &self,
        mut a: Accepted,
        now: u64,
        replica: ReplicaId,
    ) -> Result<Accepted, BundleError> {
        let (epoch, digest, artifact) = (a.epoch, a.digest, &a.artifact);
        match (self.current, self.previous) {
            (Some((e, d)), _) if epoch == e && d != digest => {
                return Err(BundleError::Equivocation(e))
            }
            (_, Some((e, d))) if epoch == e && d != digest => {
                return Err(BundleError::Equivocation(e))
            }
            (Some((e, _)), prev)
                if epoch < e && !(epoch + 1 == e && prev.is_none_or(|(pe, _)| pe == epoch)) =>
            {
                return Err(BundleError::EpochRollback {
                    got: epoch,
                    newest: e,
                })
            }
            _ => {}
        }
        if let Some(retired_through) = self.retired_through.filter(|&r| epoch <= r) {
            return Err(BundleError::EpochRetired {
                epoch,
                retired_through,
            });
        }
        if now < artifact.not_before || now >= artifact.not_after {
            return Err(BundleError::Expired {
                not_before: artifact.not_before,
                not_after: artifact.not_after,
                now,
            });
        }
        self.key_window_now(self.key(&a.witness_key)?, now)?;
        self.checkpoint_key_window(&a.checkpoint_key, now)?;
        if artifact.replica(replica).is_none() {
            return Err(BundleError::ReplicaNotInBundle(replica));
        }
        a.extends = self.last_checkpoint();
        Ok(a)
    }

    /// Moves the verifier forward to a checked bundle: the state file (if any) is
    /// written before memory changes, so a restart never goes back.
    pub fn accept(&mut self, a: &Accepted) -> Result<(), BundleError> {
        let head = self.last_checkpoint();
        if head != a.extends && head != Some(a.checkpoint) {
            return Err(BundleError::StaleCheck {
                checked_against: a.extends.map(|(size, _)| size),
                newest: head.map_or(0, |(size, _)| size),
            });
        }
        let mut next = self.clone();
        match next.current {
            Some((e, _)) if a.epoch < e => next.previous = Some((a.epoch, a.digest)),
            Some((e, _)) if a.epoch == e => {}
            current => {
                next.previous = current;
                next.current = Some((a.epoch, a.digest));
            }
        }
        if !next.checkpoints.contains(&a.checkpoint) {
            next.checkpoints.push(a.checkpoint);
            next.checkpoints.sort_unstable();
            if next.checkpoints.len() > CHECKPOINTS_KEPT {
                next.checkpoints.remove(0);
            }
        }
        // Most replies carry the bundle already accepted: write only on change.
        let changed = (next.current, next.previous, &next.checkpoints)
            != (self.current, self.previous, &self.checkpoints);
        if changed {
            next.save()?;
        }
        next.last = Some(a.clone());
        *self = next;
        Ok(())
    }

    /// Applies a witnessed, countersigned early retirement ([`EpochRetirement`])
    /// at time `now`: from then on every epoch up to its `retired_through` is
    /// refused ([`BundleError::EpochRetired`]), across restarts if the verifier
    /// persists. Its witness key must be pinned and valid both at the
    /// retirement's time and at `now`. Returns the newest retired epoch.
    pub fn retire(&mut self, retirement: &[u8], now: u64) -> Result<u64, BundleError> {
        let r = EpochRetirement::decode(retirement).map_err(BundleError::RetirementMalformed)?;
        if r.namespace != self.namespace {
            return Err(BundleError::Namespace {
                got: r.namespace,
                want: self.namespace.clone(),
            });
        }
        let key = self.key(&r.witness_key)?;
        self.key_at_claimed_time(key, r.timestamp)?;
        self.key_window_now(key, now)?;
        if !r.witness_signature_holds(&key.public_key) {
            return Err(BundleError::WitnessSignature);
        }
        if !r.countersignature_holds(&self.operator_key) {
            return Err(BundleError::Countersignature);
        }
        let through = self.retired_through.max(Some(r.retired_through));
        if through != self.retired_through {
            let mut next = self.clone();
            next.retired_through = through;
            next.save()?;
            *self = next;
        }
        Ok(self.retired_through.unwrap_or(r.retired_through))
    }

    fn save(&self) -> Result<(), BundleError> {
        let Some(path) = &self.state else {
            return Ok(());
        };
        let hexs = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut text = String::new();
        for (tag, v) in [("current", self.current), ("previous", self.previous)] {
            if let Some((e, d)) = v {
                text.push_str(&format!("{tag} {e} {}\n", hexs(&d)));
            }
        }
        for (size, root) in &self.checkpoints {
            text.push_str(&format!("checkpoint {size} {}\n", hexs(root)));
        }
        if let Some(e) = self.retired_through {
            text.push_str(&format!("retired {e}\n"));
        }
        crate::durable::write_atomically(path, text.as_bytes()).map_err(|source| {
            BundleError::State {
                path: path.clone(),
                source,
            }
        })
    }

    /// Checks that a vault reply's `signed` bytes carry `signature` by `replica`'s
    /// response key in the accepted `artifact`.
    pub fn verify_reply(
        artifact: &FleetArtifact,
        replica: ReplicaId,
        signed: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), BundleError> {
        let r = artifact
            .replica(replica)
            .ok_or(BundleError::ReplicaNotInBundle(replica))?;
        if verify_signature(&r.response_key, signed, signature) {
            Ok(())
        } else {
            Err(BundleError::ReplySignature(replica))
        }
    }
}

/// The names of the `cosigners` (C2SP tlog-cosignature `cosignature/v1`
/// verifiers, [`NoteVerifier::cosignature`]) that cosigned `note`, in their
/// order, each once: a line under a cosigner's name and key ID that verifies
/// with a non-zero timestamp (C2SP tlog-witness: "The cosignature MUST NOT
/// omit the timestamp, i.e. the timestamp MUST NOT be zero."). Lines by other
/// keys are ignored; a line under a cosigner's name and key ID that does not
/// verify refuses the note ([`BundleError::BadCosignature`]; C2SP
/// signed-note: "If the key name and ID match a known key, verifiers MUST
/// verify the signature"). What [`FleetVerifier::require_cosigners`] counts.
pub fn cosigned_by(
    note: &SignedNote,
    cosigners: &[NoteVerifier],
) -> Result<Vec<String>, BundleError> {
    // One line at a time: `NoteVerifier::verify` stops at the first line
    // that verifies, and every line of a known key must be verified.
    let mut one = SignedNote {
        text: note.text.clone(),
        signatures: Vec::with_capacity(1),
    };
    let mut signed: Vec<String> = Vec::new();
    for c in cosigners {
        let id = c.key_hash();
        let mut counted = false;
        let mut seen: Vec<&[u8]> = Vec::new();
        for line in note
            .signatures
            .iter()
            .filter(|s| s.name == c.name && s.key_hash == id)
        {
            // A line repeated verbatim is verified once.
            if seen.contains(&line.payload.as_slice()) {
                continue;
            }
            seen.push(&line.payload);
            one.signatures.clear();
            one.signatures.push(line.clone());
            match c.verify(&one) {
                Ok(Some(timestamp)) => counted |= timestamp != 0,
                Ok(None) => {}
                Err(source) => {
                    return Err(BundleError::BadCosignature {
                        cosigner: c.name.clone(),
                        source,
                    })
                }
            }
        }
        if counted && !signed.contains(&c.name) {
            signed.push(c.name.clone());
        }
    }
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::cosign;
    use vaultfleet::hsm::{Hsm, KeyKind};
    use vaultfleet::SoftHsm;

    /// [`cosigned_by`], the rule both the bundle verifier and the node's
    /// served checkpoint apply: a pinned cosigner counts once, with a
    /// non-zero timestamp; an unpinned key's line is ignored; a line under a
    /// pinned name and key ID that does not verify refuses the note (C2SP
    /// signed-note: "If the key name and ID match a known key, verifiers MUST
    /// verify the signature").
    #[test]
    fn cosigned_by_counts_pinned_cosigners_and_refuses_their_bad_lines() {
        let hsm = SoftHsm::from_seed(7);
        let text = "example.origin\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let (a, b) = ("c.example/a", "c.example/b");
        let ka = hsm.key("a", KeyKind::Signing).unwrap();
        let kb = hsm.key("b", KeyKind::Signing).unwrap();
        let kx = hsm.key("x", KeyKind::Signing).unwrap();
        let pins = vec![
            NoteVerifier::cosignature(a, hsm.public_key(ka).unwrap()).unwrap(),
            NoteVerifier::cosignature(b, hsm.public_key(kb).unwrap()).unwrap(),
        ];
        let note = |lines: Vec<crate::note::NoteSignature>| SignedNote {
            text: text.into(),
            signatures: lines,
        };
        let line = |k, name: &str, t: u64| cosign(&hsm, k, name, text, t).unwrap();
        // A twice, B with a zero timestamp, an unpinned key under B's name.
        let n = note(vec![
            line(ka, a, 5),
            line(ka, a, 6),
            line(kb, b, 0),
            line(kx, b, 5),
        ]);
        assert_eq!(cosigned_by(&n, &pins).unwrap(), vec![a.to_string()]);
        let n = note(vec![line(kb, b, 5), line(ka, a, 5)]);
        assert_eq!(
            cosigned_by(&n, &pins).unwrap(),
            vec![a.to_string(), b.to_string()],
            "in pin order"
        );
        // B's line of another text: a known key's line that does not verify.
        let other = cosign(
            &hsm,
            kb,
            b,
            "example.origin\n2\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            5,
        )
        .unwrap();
        let n = note(vec![line(ka, a, 5), line(kb, b, 5), other]);
        assert!(matches!(
            cosigned_by(&n, &pins),
            Err(BundleError::BadCosignature { cosigner, .. }) if cosigner == b
        ));
    }
}
