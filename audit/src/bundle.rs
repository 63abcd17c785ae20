//! The validation bundle and the client's check of it.
//!
//! A bundle is everything a client with no fleet keys needs to trust a fleet:
//! the fleet artifact, the witness's signature on (namespace, time, epoch,
//! digest), the operator's countersignature on exactly that witness signature,
//! and an inclusion proof of the witness's statement in a checkpoint of the
//! witness's log. [`FleetVerifier`], pinned only to the witness's and the
//! operator's public keys, checks every link in order and names the first one
//! that breaks. It never accepts an epoch older than the one before the newest it
//! has accepted (the previous fleet keeps serving during a rotation), and can
//! persist the newest epoch it accepted.

use std::path::{Path, PathBuf};

use crate::fleet::{ArtifactError, FleetArtifact};
use crate::merkle::{leaf_hash, verify_inclusion, Hash, ProofError};
use crate::note::{Checkpoint, NoteError, NoteVerifier, SignedNote};
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
    /// When it may start signing.
    pub not_before: u64,
}

/// The client's check of bundles, pinned to the witness's and the operator's
/// keys only.
#[derive(Debug, Clone)]
pub struct FleetVerifier {
    namespace: String,
    witness_keys: Vec<WitnessKey>,
    operator_key: [u8; 32],
    current: Option<(u64, [u8; 32])>,
    previous: Option<(u64, [u8; 32])>,
    /// Checkpoints (size, root) accepted so far: a second root for a size is a
    /// forked log.
    checkpoints: Vec<(u64, Hash)>,
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
    /// SHA-256 of the bundle's bytes: the same bytes seen again need only the
    /// checks that depend on the time, the replica and the verifier's epochs.
    pub bundle_hash: [u8; 32],
}

impl FleetVerifier {
    /// A verifier for `namespace`, trusting `witness_keys` and `operator_key`.
    pub fn new(namespace: &str, witness_keys: Vec<WitnessKey>, operator_key: [u8; 32]) -> Self {
        Self {
            namespace: namespace.to_string(),
            witness_keys,
            operator_key,
            current: None,
            previous: None,
            checkpoints: Vec::new(),
            last: None,
            state: None,
        }
    }

    /// Keeps the newest accepted epoch (and its digest) in `path`, loading it now.
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
                    let parsed = match f.as_slice() {
                        [tag, n, d] => n.parse::<u64>().ok().zip(hash(d)).map(|v| (*tag, v)),
                        _ => None,
                    };
                    match parsed {
                        Some(("current", v)) => self.current = Some(v),
                        Some(("previous", v)) => self.previous = Some(v),
                        Some(("checkpoint", v)) => self.checkpoints.push(v),
                        _ => return Err(BundleError::StateUnreadable { path, line: n + 1 }),
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
        let accepted = self.check(bundle, now, replica)?;
        self.accept(&accepted)?;
        Ok(accepted.artifact)
    }

    /// Checks `bundle` without changing the verifier, in this order: decoding,
    /// the artifact's digest, the namespace, the witness key and its validity
    /// window, the witness signature, the countersignature, the checkpoint's
    /// signature and its agreement with every checkpoint seen before, the
    /// inclusion proof, the epoch (never back), the artifact's validity window,
    /// and the replica.
    pub fn check(
        &self,
        bundle: &[u8],
        now: u64,
        replica: ReplicaId,
    ) -> Result<Accepted, BundleError> {
        let bundle_hash: [u8; 32] = sha2::Sha256::digest(bundle).into();
        if let Some(last) = self.last.as_ref().filter(|l| l.bundle_hash == bundle_hash) {
            // Every signature and proof of these exact bytes held already.
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
        let key = self
            .witness_keys
            .iter()
            .find(|k| k.name == b.witness_key)
            .ok_or_else(|| BundleError::UnknownWitnessKey(b.witness_key.clone()))?;
        if b.timestamp < key.not_before {
            return Err(BundleError::WitnessKeyNotYetValid {
                key: key.name.clone(),
                timestamp: b.timestamp,
                not_before: key.not_before,
            });
        }
        // A key retires when the next one starts: a statement dated after that is
        // a retired (possibly stolen) key at work.
        if let Some(next) = self
            .witness_keys
            .iter()
            .map(|k| k.not_before)
            .filter(|&nb| nb > key.not_before)
            .min()
        {
            if b.timestamp >= next {
                return Err(BundleError::WitnessKeyRetired {
                    key: key.name.clone(),
                    timestamp: b.timestamp,
                    retired: next,
                });
            }
        }
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
        let verifier =
            NoteVerifier::ed25519(&key.name, key.public_key).map_err(BundleError::Checkpoint)?;
        // Any pinned witness key valid at the checkpoint may have signed it.
        let signed = verifier.verify(&note).is_ok()
            || self.witness_keys.iter().any(|k| {
                NoteVerifier::ed25519(&k.name, k.public_key).is_ok_and(|v| v.verify(&note).is_ok())
            });
        if !signed {
            return Err(BundleError::CheckpointUnsigned);
        }
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
                bundle_hash,
            },
            now,
            replica,
        )
    }

    /// The checks of a verified bundle that depend on the verifier's epochs, the
    /// time and the answering replica.
    fn admit(&self, a: Accepted, now: u64, replica: ReplicaId) -> Result<Accepted, BundleError> {
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
        if now < artifact.not_before || now >= artifact.not_after {
            return Err(BundleError::Expired {
                not_before: artifact.not_before,
                not_after: artifact.not_after,
                now,
            });
        }
        if artifact.replica(replica).is_none() {
            return Err(BundleError::ReplicaNotInBundle(replica));
        }
        Ok(a)
    }

    /// Moves the verifier forward to a checked bundle: the state file (if any) is
    /// written before memory changes, so a restart never goes back.
    pub fn accept(&mut self, a: &Accepted) -> Result<(), BundleError> {
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
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| BundleError::State {
            path: path.clone(),
            source,
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
