//! The witness: it signs (namespace, timestamp, epoch, digest) for an operator's
//! fleet-key log, under rules it enforces and persists before any signature is
//! returned, and it keeps every statement it signed in an RFC 6962 log with C2SP
//! checkpoints. The operator then countersigns the witness's signature bytes with
//! its own HSM-held key.
//!
//! Rules, per namespace: the first epoch is 1 and each next one is exactly one
//! more; a digest is never signed twice; an epoch is never signed twice. The
//! state is written to a file (temporary file, fsync, rename, directory fsync)
//! before a signature leaves [`Witness::sign`], so a crash can never leave a
//! signature the log does not hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::consistency::ConsistencyProof;
use crate::durable::{write_atomically, LockFile};
use crate::merkle::{Hash, MerkleTree, ProofError};
use crate::note::{canonical_decimal, sign_note, Checkpoint, NoteError, SignedNote};
use crate::retirement::EpochRetirement;
use vaultfleet::codec::{EncodeError, Writer};
use vaultfleet::hsm::{verify_signature, Hsm, HsmError, KeyKind};

/// Longest namespace or witness key name, in bytes (signed inputs carry their
/// length in one byte).
pub const NAME_BYTES_MAX: usize = 255;

// The signed inputs below (statement, log leaf, countersignature) are built with
// the codec's `Writer`, not with `vaultfleet::codec::labeled`: they predate that
// helper, and every statement already witnessed, logged and countersigned must
// still verify, so their bytes stay exactly as they were: a newline-terminated
// label, `u8`-length-prefixed names, fixed-width fields as they are.
const STATEMENT_LABEL: &[u8] = b"vaultfleet/witness-statement/v1\n";
const COUNTERSIGN_LABEL: &[u8] = b"vaultfleet/operator-countersign/v1\n";

/// A witness signing key: its name (as in notes), HSM label and the first
/// moment it may sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKeySpec {
    /// Name in signatures and notes (also the key's HSM label suffix).
    pub name: String,
    /// Seconds since the Unix epoch from which the key signs.
    pub not_before: u64,
}

/// What the witness signed, exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The operator's log.
    pub namespace: String,
    /// When (seconds since the Unix epoch).
    pub timestamp: u64,
    /// The fleet epoch.
    pub epoch: u64,
    /// The fleet artifact's digest.
    pub digest: [u8; 32],
}

impl Statement {
    /// The bytes the witness signs. A namespace longer than
    /// [`NAME_BYTES_MAX`] does not encode.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::with_capacity(STATEMENT_LABEL.len() + 1 + self.namespace.len() + 48);
        w.raw(STATEMENT_LABEL)
            .short_text(&self.namespace, "statement namespace")?
            .u64(self.timestamp)
            .u64(self.epoch)
            .raw(&self.digest);
        Ok(w.into_vec())
    }
}

/// A witness signature on a statement, and where the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnessed {
    /// The statement.
    pub statement: Statement,
    /// The witness key's name.
    pub key: String,
    /// Ed25519 over [`Statement::signed_bytes`].
    pub signature: [u8; 64],
    /// The statement's leaf index in the namespace's log.
    pub leaf_index: u64,
}

/// The log leaf of a witnessed statement: the statement, the key name (`u8`
/// length), the signature.
pub fn leaf_bytes(
    statement: &Statement,
    key: &str,
    signature: &[u8; 64],
) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::from_vec(statement.signed_bytes()?);
    w.short_text(key, "witness key name")?.raw(signature);
    Ok(w.into_vec())
}

/// Decodes a log leaf ([`leaf_bytes`]) back into the statement, key and
/// signature it holds, at `leaf_index`: what a client that fetched the log's
/// entries (C2SP tlog-tiles entry bundles) checks. Names outside the witness's
/// alphabet are refused, as [`parse_log`] refuses them.
pub fn parse_leaf(bytes: &[u8], leaf_index: u64) -> Result<Witnessed, LeafError> {
    let mut r = vaultfleet::codec::Reader::new(bytes);
    if r.take(STATEMENT_LABEL.len(), "log leaf label")? != STATEMENT_LABEL {
        return Err(LeafError::NotAStatement);
    }
    let namespace = r.short_text("log leaf namespace")?.to_owned();
    let timestamp = r.u64("log leaf timestamp")?;
    let epoch = r.u64("log leaf epoch")?;
    let digest = r.array("log leaf digest")?;
    let key = r.short_text("log leaf key name")?.to_owned();
    let signature = r.array("log leaf signature")?;
    r.expect_empty("log leaf")?;
    if !valid_name(&namespace) || !valid_name(&key) {
        return Err(LeafError::InvalidName);
    }
    Ok(Witnessed {
        statement: Statement {
            namespace,
            timestamp,
            epoch,
            digest,
        },
        key,
        signature,
        leaf_index,
    })
}

/// A log leaf that does not decode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeafError {
    /// The bytes break the leaf's encoding.
    #[error("malformed log leaf: {0}")]
    Malformed(#[from] vaultfleet::codec::DecodeError),
    /// The leaf does not start with the witness statement's label.
    #[error("the log leaf is not a witness statement (its label differs)")]
    NotAStatement,
    /// A namespace or key name outside [A-Za-z0-9._-/].
    #[error("the log leaf has an invalid namespace or key name")]
    InvalidName,
}

/// The witness refused, or could not keep its state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// Epochs go up by exactly one.
    #[error("namespace {namespace:?}: epoch {got} refused, the next epoch is {want}")]
    EpochOutOfOrder {
        /// The namespace.
        namespace: String,
        /// Epoch asked for.
        got: u64,
        /// The only epoch it would sign.
        want: u64,
    },
    /// The epoch was signed already (a second digest for it is equivocation).
    #[error("namespace {namespace:?}: epoch {epoch} was signed already; never twice")]
    EpochSigned {
        /// The namespace.
        namespace: String,
        /// The epoch.
        epoch: u64,
    },
    /// The digest was signed already.
    #[error("namespace {namespace:?}: this digest was signed already (epoch {epoch}); digests are never reused")]
    DigestReused {
        /// The namespace.
        namespace: String,
        /// The epoch it was signed for.
        epoch: u64,
    },
    /// No key may sign at this time.
    #[error("no witness key is valid at {0} (all have a later not_before)")]
    NoKey(u64),
    /// No keys, or a key name outside the allowed characters.
    #[error("a witness needs at least one key, each named with 1..=255 of [A-Za-z0-9._-/]")]
    InvalidKeys,
    /// A namespace outside the allowed characters.
    #[error("invalid namespace {0:?}: use 1..=255 of [A-Za-z0-9._-/]")]
    InvalidNamespace(String),
    /// A statement dated before the last one of its namespace.
    #[error("namespace {namespace:?}: timestamp {timestamp} is before the last statement's {last}: the witness's time never goes back")]
    TimeWentBack {
        /// The namespace.
        namespace: String,
        /// The statement's timestamp.
        timestamp: u64,
        /// The last statement's timestamp.
        last: u64,
    },
    /// The HSM failed.
    #[error("witness HSM: {0}")]
    Hsm(#[from] HsmError),
    /// The state file could not be read or written.
    #[error("witness state {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// What the file system reported.
        #[source]
        source: std::io::Error,
    },
    /// The state's lock file could not be created.
    #[error("cannot take the witness lock {path} ({source}); another witness process runs on this state, or one crashed: remove the file only after making sure none runs")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the file system reported.
        #[source]
        source: std::io::Error,
    },
    /// The state file does not parse.
    #[error("witness state {path}: {source}")]
    Log {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: LogError,
    },
    /// A statement in the state file breaks the witness's rules.
    #[error("witness state {path}: line {line} breaks the rules: {source}")]
    LogBreaksRules {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The rule it breaks.
        #[source]
        source: Box<WitnessError>,
    },
    /// A statement in the state file is not signed by this witness's key.
    #[error("witness state {path}: line {line} is not signed by this witness's key {key:?}")]
    LogNotSigned {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The key it names.
        key: String,
    },
    /// A write of the state failed earlier: the file may hold more than memory.
    #[error("witness state {path}: an earlier write failed; reopen the witness")]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// A statement does not encode (a name longer than [`NAME_BYTES_MAX`]).
    #[error("the statement does not encode: {0}")]
    Encode(#[from] EncodeError),
    /// A checkpoint could not be signed.
    #[error("checkpoint: {0}")]
    Note(#[from] NoteError),
    /// A consistency proof was asked for sizes the log cannot prove.
    #[error("consistency proof: {0}")]
    Proof(#[from] ProofError),
    /// A retirement of epochs the witness never signed (or of epoch 0).
    #[error("namespace {namespace:?}: cannot retire through epoch {retired_through}, the last signed epoch is {last}")]
    RetiresUnsignedEpoch {
        /// The namespace.
        namespace: String,
        /// The epoch asked to retire through.
        retired_through: u64,
        /// The last epoch signed (0: none).
        last: u64,
    },
}

/// A witness log file (its state) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A line is not `namespace epoch digest timestamp key signature`.
    #[error("line {line} is not `namespace epoch digest timestamp key signature`")]
    Malformed {
        /// The line (from 1).
        line: usize,
    },
    /// A line's namespace or key name is outside [A-Za-z0-9._-/] or too long.
    #[error("line {line} has an invalid namespace or key name")]
    InvalidName {
        /// The line (from 1).
        line: usize,
    },
}

/// The operator's countersignature could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CountersignError {
    /// The witness key's name is too long to be countersigned.
    #[error("the countersigned bytes do not encode: {0}")]
    Encode(#[from] EncodeError),
    /// The operator's HSM failed.
    #[error("operator HSM: {0}")]
    Hsm(#[from] HsmError),
}

#[derive(Debug, Clone, Default)]
struct Log {
    entries: Vec<Witnessed>,
    tree: MerkleTree,
}

/// The witness: an HSM with its signing keys, and its per-namespace logs.
pub struct Witness<H: Hsm> {
    hsm: H,
    keys: Vec<WitnessKeySpec>,
    logs: BTreeMap<String, Log>,
    path: PathBuf,
    /// A write of the state failed: the file may hold more than memory does, so
    /// this instance signs nothing more (reopen it).
    poisoned: bool,
    _lock: LockFile,
}

impl<H: Hsm> std::fmt::Debug for Witness<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("keys", &self.keys)
            .field("namespaces", &self.logs.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn key_label(name: &str) -> String {
    format!("witness/{name}")
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_BYTES_MAX
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl<H: Hsm> Witness<H> {
    /// Opens (or creates) the witness whose state lives at `path`, with signing
    /// keys `keys` in `hsm` (created on first use).
    pub fn open(
        hsm: H,
        keys: Vec<WitnessKeySpec>,
        path: impl AsRef<Path>,
    ) -> Result<Self, WitnessError> {
        if keys.is_empty() || keys.iter().any(|k| !valid_name(&k.name)) {
            return Err(WitnessError::InvalidKeys);
        }
        for k in &keys {
            hsm.key(&key_label(&k.name), KeyKind::Signing)?;
        }
        let path = path.as_ref().to_path_buf();
        // Two witness processes on one state could each sign an epoch and
        // each keep its own log.
        let lock_path = path.with_extension("lock");
        let lock = LockFile::acquire(lock_path.clone()).map_err(|source| WitnessError::Locked {
            path: lock_path,
            source,
        })?;
        let mut w = Self {
            hsm,
            keys,
            logs: BTreeMap::new(),
            path,
            poisoned: false,
            _lock: lock,
        };
        w.load()?;
        Ok(w)
    }

    fn state_error(&self, source: std::io::Error) -> WitnessError {
        WitnessError::State {
            path: self.path.clone(),
            source,
        }
    }

    fn load(&mut self) -> Result<(), WitnessError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.state_error(e)),
        };
        let entries = parse_log(&text).map_err(|source| WitnessError::Log {
            path: self.path.clone(),
            source,
        })?;
        for (n, mut w) in entries.into_iter().enumerate() {
            self.check_rules(&w.statement)
                .map_err(|e| WitnessError::LogBreaksRules {
                    path: self.path.clone(),
                    line: n + 1,
                    source: Box::new(e),
                })?;
            let signed = self.keys.iter().any(|k| k.name == w.key)
                && self
                    .hsm
                    .key(&key_label(&w.key), KeyKind::Signing)
                    .and_then(|h| self.hsm.public_key(h))
                    .is_ok_and(|pk| {
                        w.statement
                            .signed_bytes()
                            .is_ok_and(|m| verify_signature(&pk, &m, &w.signature))
                    });
            if !signed {
                return Err(WitnessError::LogNotSigned {
                    path: self.path.clone(),
                    line: n + 1,
                    key: w.key,
                });
            }
            let log = self.logs.entry(w.statement.namespace.clone()).or_default();
            w.leaf_index = log.tree.size();
            log.tree
                .append(&leaf_bytes(&w.statement, &w.key, &w.signature)?);
            log.entries.push(w);
        }
        Ok(())
    }

    fn persist(&self, extra: &Witnessed) -> Result<(), WitnessError> {
        let mut text = String::new();
        for w in self
            .logs
            .values()
            .flat_map(|l| &l.entries)
            .chain(std::iter::once(extra))
        {
            let s = &w.statement;
            text.push_str(&format!(
                "{} {} {} {} {} {}\n",
                s.namespace,
                s.epoch,
                hex(&s.digest),
                s.timestamp,
                w.key,
                hex(&w.signature)
            ));
        }
        write_atomically(&self.path, text.as_bytes()).map_err(|e| self.state_error(e))
    }

    fn check_rules(&self, s: &Statement) -> Result<(), WitnessError> {
        if !valid_name(&s.namespace) {
            return Err(WitnessError::InvalidNamespace(s.namespace.clone()));
        }
        let entries: &[Witnessed] = self.logs.get(&s.namespace).map_or(&[], |l| &l.entries);
        if let Some(w) = entries.iter().find(|w| w.statement.digest == s.digest) {
            return Err(WitnessError::DigestReused {
                namespace: s.namespace.clone(),
                epoch: w.statement.epoch,
            });
        }
        if entries.iter().any(|w| w.statement.epoch == s.epoch) {
            return Err(WitnessError::EpochSigned {
                namespace: s.namespace.clone(),
                epoch: s.epoch,
            });
        }
        if let Some(last) = entries.last() {
            if s.timestamp < last.statement.timestamp {
                return Err(WitnessError::TimeWentBack {
                    namespace: s.namespace.clone(),
                    timestamp: s.timestamp,
                    last: last.statement.timestamp,
                });
            }
        }
        let want = entries.last().map_or(1, |w| w.statement.epoch + 1);
        if s.epoch != want {
            return Err(WitnessError::EpochOutOfOrder {
                namespace: s.namespace.clone(),
                got: s.epoch,
                want,
            });
        }
        Ok(())
    }

    /// The key that signs at `timestamp`: the one with the latest `not_before`
    /// not after it.
    fn key_at(&self, timestamp: u64) -> Result<&WitnessKeySpec, WitnessError> {
        self.keys
            .iter()
            .filter(|k| k.not_before <= timestamp)
            .max_by_key(|k| k.not_before)
            .ok_or(WitnessError::NoKey(timestamp))
    }

    /// Signs `digest` as `namespace`'s `epoch` at `timestamp`, if the rules allow;
    /// the signature is durable in the log before it is returned.
    pub fn sign(
        &mut self,
        namespace: &str,
        epoch: u64,
        digest: [u8; 32],
        timestamp: u64,
    ) -> Result<Witnessed, WitnessError> {
        let statement = Statement {
            namespace: namespace.to_string(),
            timestamp,
            epoch,
            digest,
        };
        if self.poisoned {
            return Err(WitnessError::Poisoned {
                path: self.path.clone(),
            });
        }
        self.check_rules(&statement)?;
        let key = self.key_at(timestamp)?.name.clone();
        let handle = self.hsm.key(&key_label(&key), KeyKind::Signing)?;
        let signature = self.hsm.sign(handle, &statement.signed_bytes()?)?;
        let leaf_index = self.logs.get(namespace).map_or(0, |l| l.tree.size());
        let witnessed = Witnessed {
            statement,
            key,
            signature,
            leaf_index,
        };
        // If persisting fails after the rename, the entry may be on disk though not
        // in memory: this instance refuses to sign again until reopened.
        if let Err(e) = self.persist(&witnessed) {
            self.poisoned = true;
            return Err(e);
        }
        let log = self.logs.entry(namespace.to_string()).or_default();
        log.tree.append(&leaf_bytes(
            &witnessed.statement,
            &witnessed.key,
            &witnessed.signature,
        )?);
        log.entries.push(witnessed.clone());
        Ok(witnessed)
    }

    /// The public key of witness key `name`.
    pub fn public_key(&self, name: &str) -> Result<[u8; 32], WitnessError> {
        let h = self.hsm.key(&key_label(name), KeyKind::Signing)?;
        Ok(self.hsm.public_key(h)?)
    }

    /// The key specs.
    pub fn keys(&self) -> &[WitnessKeySpec] {
        &self.keys
    }

    /// Everything signed in `namespace`, in log order.
    pub fn entries(&self, namespace: &str) -> &[Witnessed] {
        self.logs.get(namespace).map_or(&[], |l| &l.entries)
    }

    /// The namespaces it has signed in, in name order.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.logs.keys().map(String::as_str)
    }

    /// `namespace`'s log.
    pub fn tree(&self, namespace: &str) -> Option<&MerkleTree> {
        self.logs.get(namespace).map(|l| &l.tree)
    }

    /// The consistency proof of `namespace`'s log between sizes `a` and `b` (in
    /// either order): what a reply carries from the size a client last
    /// accepted to the size of the checkpoint it is sent.
    pub fn consistency_proof(
        &self,
        namespace: &str,
        a: u64,
        b: u64,
    ) -> Result<ConsistencyProof, WitnessError> {
        let empty = MerkleTree::new();
        let tree = self.logs.get(namespace).map_or(&empty, |l| &l.tree);
        Ok(ConsistencyProof::between(tree, a, b)?)
    }

    /// Signs the early retirement of every epoch up to `retired_through` in
    /// `namespace` at `timestamp`, with the key valid then. Only epochs it signed
    /// can be retired, and its time never goes back. The operator then
    /// countersigns it ([`EpochRetirement::countersign`]).
    pub fn sign_retirement(
        &self,
        namespace: &str,
        retired_through: u64,
        timestamp: u64,
    ) -> Result<EpochRetirement, WitnessError> {
        if !valid_name(namespace) {
            return Err(WitnessError::InvalidNamespace(namespace.to_string()));
        }
        let last = self
            .entries(namespace)
            .last()
            .map(|w| &w.statement)
            .cloned();
        let last_epoch = last.as_ref().map_or(0, |s| s.epoch);
        if retired_through == 0 || retired_through > last_epoch {
            return Err(WitnessError::RetiresUnsignedEpoch {
                namespace: namespace.to_string(),
                retired_through,
                last: last_epoch,
            });
        }
        if let Some(s) = last.filter(|s| timestamp < s.timestamp) {
            return Err(WitnessError::TimeWentBack {
                namespace: namespace.to_string(),
                timestamp,
                last: s.timestamp,
            });
        }
        let key = self.key_at(timestamp)?.name.clone();
        let handle = self.hsm.key(&key_label(&key), KeyKind::Signing)?;
        let witness_signature = self.hsm.sign(
            handle,
            &EpochRetirement::signed_bytes(namespace, timestamp, retired_through),
        )?;
        Ok(EpochRetirement {
            namespace: namespace.to_string(),
            timestamp,
            retired_through,
            witness_key: key,
            witness_signature,
            countersignature: [0; 64],
        })
    }

    /// A checkpoint of `namespace`'s log, signed by the key valid at `timestamp`.
    pub fn checkpoint(&self, namespace: &str, timestamp: u64) -> Result<SignedNote, WitnessError> {
        let tree = self
            .logs
            .get(namespace)
            .map(|l| l.tree.clone())
            .unwrap_or_default();
        let cp = Checkpoint {
            origin: namespace.to_string(),
            size: tree.size(),
            root: tree.root(),
            extensions: vec![],
        };
        let text = cp.body();
        let key = self.key_at(timestamp)?.name.clone();
        let handle = self.hsm.key(&key_label(&key), KeyKind::Signing)?;
        let sig = sign_note(&self.hsm, handle, &key, &text)?;
        Ok(SignedNote {
            text,
            signatures: vec![sig],
        })
    }
}

/// Parses a witness's log file (its state, which is also the log it publishes):
/// one line per signed statement, `namespace epoch digest timestamp key
/// signature`, in signing order. Only the shape is checked here; an auditor
/// checks the signatures against the keys it pins (`vaultfleet audit log`).
pub fn parse_log(text: &str) -> Result<Vec<Witnessed>, LogError> {
    let mut out = Vec::new();
    let mut next_index: BTreeMap<String, u64> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let parsed = (|| {
            let [ns, epoch, digest, ts, key, sig] = f.as_slice() else {
                return None;
            };
            Some(Witnessed {
                statement: Statement {
                    namespace: ns.to_string(),
                    // Canonical decimals only (no sign, no leading zero): one
                    // text per log, as the fuzz target's round trip checks.
                    timestamp: canonical_decimal(ts).then(|| ts.parse().ok())??,
                    epoch: canonical_decimal(epoch).then(|| epoch.parse().ok())??,
                    digest: unhex::<32>(digest)?,
                },
                key: key.to_string(),
                signature: unhex::<64>(sig)?,
                leaf_index: 0,
            })
        })();
        let Some(mut w) = parsed else {
            return Err(LogError::Malformed { line: n + 1 });
        };
        if !valid_name(&w.statement.namespace) || !valid_name(&w.key) {
            return Err(LogError::InvalidName { line: n + 1 });
        }
        let index = next_index.entry(w.statement.namespace.clone()).or_insert(0);
        w.leaf_index = *index;
        *index += 1;
        out.push(w);
    }
    Ok(out)
}

/// What the operator countersigns: the witness key's name (`u8` length) and
/// signature bytes. A name longer than [`NAME_BYTES_MAX`] does not encode.
pub fn countersigned_bytes(
    witness_key: &str,
    witness_signature: &[u8; 64],
) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::from_vec(COUNTERSIGN_LABEL.to_vec());
    w.short_text(witness_key, "countersigned witness key name")?
        .raw(witness_signature);
    Ok(w.into_vec())
}

/// The operator countersigns a witness signature with its HSM key `label`.
pub fn countersign<H: Hsm>(
    hsm: &H,
    label: &str,
    witnessed: &Witnessed,
) -> Result<[u8; 64], CountersignError> {
    let key = hsm.key(label, KeyKind::Signing)?;
    let message = countersigned_bytes(&witnessed.key, &witnessed.signature)?;
    Ok(hsm.sign(key, &message)?)
}

/// Checks an operator countersignature. A witness key name that does not
/// encode was never countersigned: false.
pub fn verify_countersignature(
    operator_key: &[u8; 32],
    witness_key: &str,
    witness_signature: &[u8; 64],
    countersignature: &[u8; 64],
) -> bool {
    countersigned_bytes(witness_key, witness_signature)
        .is_ok_and(|m| verify_signature(operator_key, &m, countersignature))
}

/// Base64 of a hash, as checkpoints write them.
pub fn b64(h: &Hash) -> String {
    B64.encode(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_decodes_to_what_was_encoded_and_edits_are_refused() {
        let statement = Statement {
            namespace: "example.vault.fleet_keys.v1".into(),
            timestamp: 1_700_000_000,
            epoch: 4,
            digest: [9; 32],
        };
        let bytes = leaf_bytes(&statement, "witness-1", &[3; 64]).unwrap();
        let w = parse_leaf(&bytes, 17).unwrap();
        assert_eq!(w.statement, statement);
        assert_eq!(
            (w.key.as_str(), w.signature, w.leaf_index),
            ("witness-1", [3; 64], 17)
        );
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(parse_leaf(&long, 0), Err(LeafError::Malformed(_))));
        assert!(matches!(
            parse_leaf(&bytes[..bytes.len() - 1], 0),
            Err(LeafError::Malformed(_))
        ));
        let mut label = bytes.clone();
        label[0] ^= 1;
        assert!(matches!(
            parse_leaf(&label, 0),
            Err(LeafError::NotAStatement)
        ));
        let bad = Statement {
            namespace: "has space".into(),
            ..statement
        };
        let bytes = leaf_bytes(&bad, "witness-1", &[3; 64]).unwrap();
        assert!(matches!(parse_leaf(&bytes, 0), Err(LeafError::InvalidName)));
    }

    /// The log's text has one spelling per statement: numbers are canonical
    /// decimals (the fuzz campaign found `+5` and `05` accepted).
    #[test]
    fn the_log_text_takes_canonical_decimals_only() {
        let line = |epoch: &str, ts: &str| {
            format!(
                "ns {epoch} {} {ts} witness-1 {}\n",
                "ab".repeat(32),
                "cd".repeat(64)
            )
        };
        assert_eq!(parse_log(&line("5", "0")).unwrap()[0].statement.epoch, 5);
        for (epoch, ts) in [
            ("+5", "1"),
            ("05", "1"),
            ("5", "01"),
            ("5", "+1"),
            ("", "1"),
        ] {
            assert!(
                matches!(
                    parse_log(&line(epoch, ts)),
                    Err(LogError::Malformed { line: 1 })
                ),
                "{epoch:?} {ts:?}"
            );
        }
    }
}
