//! A C2SP tlog-witness cosigner (<https://c2sp.org/tlog-witness>), sans-IO: it
//! turns an `add-checkpoint` request body into the response body or a
//! [`Refusal`] carrying the HTTP status the spec fixes, and answers the
//! monitoring endpoint (`GET <prefix>/<origin hash>/checkpoint`). It opens no
//! socket; an HTTP server (the `vaultfleet-tlog` crate) maps requests onto it.
//! The only files it touches are its state file, the state's temporary file and
//! its lock file. The log's side of the protocol is here too:
//! [`AddCheckpoint::encode`], [`merge_cosignatures`] and [`parse_tlog_size`].
//!
//! # Cosignature algorithm
//!
//! tlog-witness says witnesses SHOULD use ML-DSA-44 cosignatures. This cosigner
//! signs Ed25519 `cosignature/v1` (key ID algorithm byte 0x04, see
//! [`ALG_COSIGNATURE_V1`](crate::note::ALG_COSIGNATURE_V1)), which issue 16 asks
//! for and which every HSM behind [`Hsm`] supports. Its key must sign nothing
//! else: the Ed25519 message does not commit to the cosigner's name.
//!
//! # Invariants
//!
//! * Per origin it keeps the latest checkpoint it cosigned; a checkpoint is
//!   cosigned only if it is consistent with that one (a consistency proof, or an
//!   identical root at the same size), so it never cosigns a rollback or a fork.
//! * The check and the update are one step: [`Cosigner::add_checkpoint`] takes
//!   `&mut self`, and a lock file (created exclusively, removed on drop) keeps a
//!   second process off the same state.
//! * The new state is durable (temporary file, fsync, rename, directory fsync)
//!   before a cosignature leaves [`Cosigner::add_checkpoint`]. The cosignature is
//!   computed just before the write so that the one atomic write also holds the
//!   cosigned note the monitoring endpoint serves; it is dropped unreturned if
//!   the write fails. A failed write poisons the instance (the file may hold more
//!   than memory): it refuses everything until reopened.
//! * The state file ends with an HMAC (a key in the same HSM) over all of it, and
//!   each entry carries this cosigner's own cosignature: an edited, truncated or
//!   corrupt file is an error at [`Cosigner::open`], never a reset to size 0
//!   (which would let the log fork). Replacing the file with an older complete
//!   copy, or deleting it, is not detected here: protect it like the key.
//! * Cosignature timestamps never go back per origin: a clock before the last
//!   cosignature's timestamp for that origin (or a zero clock) is refused with a
//!   500 rather than cosigned, since `cosignature/v1` states the largest tree seen
//!   "as of the specified time", and an earlier time for a larger tree would
//!   contradict the cosignature already given.

use crate::durable::{write_atomically, LockFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::merkle::{empty_root, verify_consistency, Hash, ProofError};
use crate::note::{
    canonical_decimal, cosign, Checkpoint, NoteError, NoteSignature, NoteVerifier, SignedNote,
    ALG_ED25519, NOTE_MAX,
};
use vaultfleet::codec::labeled;
use vaultfleet::hsm::{Hsm, HsmError, KeyHandle, KeyKind};

/// Most consistency proof lines in a request: "The client MUST NOT send more
/// than 63 consistency proof lines."
pub const PROOF_LINES_MAX: usize = 63;
/// Largest `add-checkpoint` body accepted, in bytes: the old size line, 63 proof
/// lines and a note of at most [`NOTE_MAX`] bytes.
pub const ADD_CHECKPOINT_BYTES_MAX: usize = 32 + PROOF_LINES_MAX * 45 + 1 + NOTE_MAX;
/// Most logs one cosigner follows.
pub const FOLLOWED_LOGS_MAX: usize = 4096;
/// Largest state file read at open, in bytes.
pub const STATE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The `Content-Type` of a 409 body.
pub const CONTENT_TYPE_TLOG_SIZE: &str = "text/x.tlog.size";
/// The `Content-Type` of a 200 body and of the refusals other than 409.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

const STATE_HEADER: &str = "vaultfleet-cosigner-state v1";
const STATE_MAC_LABEL: &[u8] = b"vaultfleet/cosigner-state/v1";
const DASH: &str = "\u{2014} ";

/// The body of an `add-checkpoint` request: the size of the checkpoint the
/// cosigner last cosigned, the consistency proof from it, and the new
/// checkpoint with the log's signature(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the previous checkpoint (0 if the log knows of none).
    pub old_size: u64,
    /// The RFC 6962 consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The new checkpoint, signed by the log.
    pub checkpoint: SignedNote,
}

impl AddCheckpoint {
    /// The request body.
    pub fn encode(&self) -> String {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint.encode());
        s
    }

    /// Parses a request body (bounded by [`ADD_CHECKPOINT_BYTES_MAX`]); the
    /// checkpoint note's text must be a checkpoint. Every error is a 400.
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        if body.len() > ADD_CHECKPOINT_BYTES_MAX {
            return Err(Refusal::TooLarge {
                len: body.len(),
                max: ADD_CHECKPOINT_BYTES_MAX,
            });
        }
        let body =
            std::str::from_utf8(body).map_err(|_| Refusal::Malformed("body is not UTF-8"))?;
        let (old, mut rest) = body
            .split_once('\n')
            .ok_or(Refusal::Malformed("each line ends with a newline"))?;
        let old_size = old
            .strip_prefix("old ")
            .filter(|n| canonical_decimal(n))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or(Refusal::Malformed(
                "the first line is `old` and a decimal size without leading zeros",
            ))?;
        let mut proof = Vec::new();
        loop {
            let (line, next) = rest
                .split_once('\n')
                .ok_or(Refusal::Malformed("no empty line before the checkpoint"))?;
            rest = next;
            if line.is_empty() {
                break;
            }
            if proof.len() == PROOF_LINES_MAX {
                return Err(Refusal::Malformed("more than 63 consistency proof lines"));
            }
            let hash = B64
                .decode(line)
                .ok()
                .and_then(|b| <Hash>::try_from(b.as_slice()).ok())
                .ok_or(Refusal::Malformed(
                    "a consistency proof line is one hash in base64",
                ))?;
            proof.push(hash);
        }
        let checkpoint = SignedNote::parse(rest).map_err(Refusal::MalformedNote)?;
        Checkpoint::parse(&checkpoint.text).map_err(Refusal::MalformedNote)?;
        Ok(Self {
            old_size,
            proof,
            checkpoint,
        })
    }
}

/// A log the cosigner follows: its origin line and the log keys it trusts for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedLog {
    /// The checkpoint origin line.
    pub origin: String,
    /// The log's Ed25519 note keys ([`NoteVerifier::ed25519`]); a checkpoint
    /// needs a valid signature from at least one.
    pub keys: Vec<NoteVerifier>,
}

/// Why the cosigner refused a request, with the HTTP status tlog-witness fixes
/// for it ([`Refusal::status`]) and the response body ([`Refusal::body`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The body breaks the `add-checkpoint` grammar (400); the context names the rule.
    #[error("malformed add-checkpoint request: {0}")]
    Malformed(&'static str),
    /// The checkpoint is not a well-formed signed checkpoint note (400).
    #[error("malformed checkpoint: {0}")]
    MalformedNote(#[source] NoteError),
    /// The body is longer than [`ADD_CHECKPOINT_BYTES_MAX`] (413).
    #[error("request of {len} bytes, at most {max} are accepted")]
    TooLarge {
        /// The body's length.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// The old size is above the checkpoint's size (400).
    #[error("old size {old_size} is above the checkpoint size {size}")]
    OldSizeAfterCheckpoint {
        /// The request's old size.
        old_size: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The cosigner follows no log with this origin (404).
    #[error("unknown log origin {0:?}")]
    UnknownOrigin(String),
    /// No signature from a key trusted for the origin (403).
    #[error("the checkpoint carries no signature from a key trusted for {0:?}")]
    NotSignedByLog(String),
    /// A signature line names a trusted key (name and key ID) but does not verify (403).
    #[error("a log signature does not verify: {0}")]
    BadLogSignature(#[source] NoteError),
    /// The old size is not the size of the latest cosigned checkpoint (409).
    #[error("old size {old_size} is not the latest cosigned size {latest}")]
    Conflict {
        /// The request's old size.
        old_size: u64,
        /// The size of the latest checkpoint cosigned for the origin (0: none).
        latest: u64,
    },
    /// The consistency proof does not verify (422).
    #[error("the consistency proof does not verify: {0}")]
    BadProof(#[source] ProofError),
    /// A checkpoint of size 0 whose root is not the empty tree's (422).
    #[error("a checkpoint of size 0 must have the root of the empty tree")]
    NotEmptyRoot,
    /// A checkpoint of the latest size with another root: a fork (422).
    #[error("checkpoint of the latest cosigned size with a different root hash (a fork)")]
    SameSizeDifferentRoot,
    /// A non-empty proof with old size 0 (422).
    #[error("old size 0 takes an empty consistency proof, {0} lines were sent")]
    ProofForOldSizeZero(usize),
    /// The clock is 0 or before the last cosignature's timestamp for this
    /// origin (500): cosigning would contradict an earlier cosignature.
    #[error("clock at {now}, but the last cosignature for this log is dated {last}: refusing to date a cosignature back")]
    ClockBehind {
        /// The time given.
        now: u64,
        /// The latest cosignature's timestamp for the origin.
        last: u64,
    },
    /// The state could not be persisted, or an earlier failure poisoned it (500).
    #[error("cosigner state: {0}")]
    State(#[source] CosignerError),
    /// The HSM failed (500).
    #[error("cosigner HSM: {0}")]
    Hsm(#[source] HsmError),
    /// The cosignature could not be made (500).
    #[error("cosigning: {0}")]
    Cosign(#[source] NoteError),
}

impl Refusal {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_)
            | Refusal::MalformedNote(_)
            | Refusal::OldSizeAfterCheckpoint { .. } => 400,
            Refusal::TooLarge { .. } => 413,
            Refusal::UnknownOrigin(_) => 404,
            Refusal::NotSignedByLog(_) | Refusal::BadLogSignature(_) => 403,
            Refusal::Conflict { .. } => 409,
            Refusal::BadProof(_)
            | Refusal::NotEmptyRoot
            | Refusal::SameSizeDifferentRoot
            | Refusal::ProofForOldSizeZero(_) => 422,
            Refusal::ClockBehind { .. }
            | Refusal::State(_)
            | Refusal::Hsm(_)
            | Refusal::Cosign(_) => 500,
        }
    }

    /// The response's `Content-Type` and body. A 409 is the latest size in
    /// decimal and a newline, as `text/x.tlog.size`; a 500 says no more than
    /// "internal error" (its details, such as paths, are for the operator's log).
    pub fn body(&self) -> (&'static str, String) {
        match self {
            Refusal::Conflict { latest, .. } => (CONTENT_TYPE_TLOG_SIZE, format!("{latest}\n")),
            _ if self.status() == 500 => (CONTENT_TYPE_TEXT, "internal error\n".to_string()),
            _ => (CONTENT_TYPE_TEXT, format!("{self}\n")),
        }
    }
}

/// The cosigner could not open, or could not keep, its state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CosignerError {
    /// The cosigner's name is not a valid note key name.
    #[error("cosigner name: {0}")]
    Name(#[source] NoteError),
    /// A followed log is misconfigured; the context says how.
    #[error("followed log {origin:?}: {what}")]
    InvalidLog {
        /// The log's origin.
        origin: String,
        /// What is wrong.
        what: &'static str,
    },
    /// More logs than [`FOLLOWED_LOGS_MAX`].
    #[error("{0} followed logs, at most {FOLLOWED_LOGS_MAX}")]
    TooManyLogs(usize),
    /// The HSM failed.
    #[error("cosigner HSM: {0}")]
    Hsm(#[from] HsmError),
    /// The state's lock file could not be created.
    #[error("cannot take the cosigner lock {path} ({source}); another cosigner process runs on this state, or one crashed: remove the file only after making sure none runs")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the file system reported.
        #[source]
        source: std::io::Error,
    },
    /// The state file could not be read or written.
    #[error("cosigner state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the file system reported.
        #[source]
        source: std::io::Error,
    },
    /// The state would grow past [`STATE_BYTES_MAX`] (too many logs, or
    /// checkpoints with long extension lines): the checkpoint is not cosigned.
    #[error("the cosigner state would be {len} bytes, at most {max} are kept: follow fewer logs")]
    StateTooLarge {
        /// Its size.
        len: usize,
        /// The most kept.
        max: usize,
    },
    /// The state file does not have the state's shape (truncated or corrupt).
    #[error("cosigner state {path}: line {line}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A state entry's note does not parse.
    #[error("cosigner state {path}: line {line}: {source}")]
    CorruptNote {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// Why the note does not parse.
        #[source]
        source: NoteError,
    },
    /// The state's MAC does not verify: the file was edited.
    #[error("cosigner state {path}: its MAC does not verify; the file was altered")]
    Tampered {
        /// The file.
        path: PathBuf,
    },
    /// A state entry lacks a valid cosignature by this cosigner's key.
    #[error("cosigner state {path}: line {line} is not cosigned by this cosigner: {source}")]
    NotCosigned {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// Why its cosignature does not verify.
        #[source]
        source: NoteError,
    },
    /// A write of the state failed earlier: the file may hold more than memory.
    #[error("cosigner state {path}: an earlier write failed; reopen the cosigner")]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
}

/// The latest checkpoint cosigned for one origin.
#[derive(Debug, Clone)]
struct Latest {
    size: u64,
    root: Hash,
    /// The timestamp of this cosigner's cosignature on it.
    timestamp: u64,
    /// The checkpoint with the log signatures that verified and this
    /// cosigner's cosignature.
    note: SignedNote,
}

/// A tlog-witness cosigner: its HSM-held key, its name, the logs it follows and
/// its state file.
pub struct Cosigner<H: Hsm> {
    hsm: H,
    key: KeyHandle,
    mac_key: KeyHandle,
    /// This cosigner's `cosignature/v1` key.
    verifier: NoteVerifier,
    logs: BTreeMap<String, Vec<NoteVerifier>>,
    latest: BTreeMap<String, Latest>,
    /// Lowercase hex SHA-256 of each origin in `latest` → the origin.
    by_hash: BTreeMap<String, String>,
    path: PathBuf,
    poisoned: bool,
    _lock: LockFile,
}

impl<H: Hsm> std::fmt::Debug for Cosigner<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.verifier.name)
            .field("logs", &self.logs.keys().collect::<Vec<_>>())
            .field("path", &self.path)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// The lowercase hex SHA-256 of an origin, as the monitoring path names it.
pub fn origin_hash_hex(origin: &str) -> String {
    Sha256::digest(origin.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn valid_origin(origin: &str) -> bool {
    !origin.is_empty() && origin.chars().all(|c| !c.is_control())
}

impl<H: Hsm> Cosigner<H> {
    /// Opens (or creates) the cosigner named `name` whose `cosignature/v1` key
    /// is the HSM signing key `key_label` (generated on first use), following
    /// `logs`, with its state at `state`. The state's MAC key is the HSM key
    /// `<key_label>/state-mac`.
    pub fn open(
        hsm: H,
        key_label: &str,
        name: &str,
        logs: Vec<FollowedLog>,
        state: impl AsRef<Path>,
    ) -> Result<Self, CosignerError> {
        if logs.len() > FOLLOWED_LOGS_MAX {
            return Err(CosignerError::TooManyLogs(logs.len()));
        }
        let mut followed = BTreeMap::new();
        for log in logs {
            let invalid = |what| CosignerError::InvalidLog {
                origin: log.origin.clone(),
                what,
            };
            if !valid_origin(&log.origin) {
                return Err(invalid("an origin is a non-empty line"));
            }
            if log.keys.is_empty() {
                return Err(invalid("a followed log needs at least one key"));
            }
            if log.keys.iter().any(|k| k.alg != ALG_ED25519) {
                return Err(invalid("log keys are Ed25519 note keys (algorithm 0x01)"));
            }
            if followed.contains_key(&log.origin) {
                return Err(invalid("the origin is listed twice"));
            }
            followed.insert(log.origin, log.keys);
        }
        let key = hsm.key(key_label, KeyKind::Signing)?;
        let verifier =
            NoteVerifier::cosignature(name, hsm.public_key(key)?).map_err(CosignerError::Name)?;
        let mac_key = hsm.key(&format!("{key_label}/state-mac"), KeyKind::Mac)?;
        let path = state.as_ref().to_path_buf();
        let lock_path = path.with_extension("lock");
        let lock =
            LockFile::acquire(lock_path.clone()).map_err(|source| CosignerError::Locked {
                path: lock_path,
                source,
            })?;
        let mut c = Self {
            hsm,
            key,
            mac_key,
            verifier,
            logs: followed,
            latest: BTreeMap::new(),
            by_hash: BTreeMap::new(),
            path,
            poisoned: false,
            _lock: lock,
        };
        c.load()?;
        Ok(c)
    }

    fn io_error(&self, source: std::io::Error) -> CosignerError {
        CosignerError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn mac_input(&self, body: &str) -> Vec<u8> {
        labeled(
            STATE_MAC_LABEL,
            &[self.verifier.name.as_bytes(), body.as_bytes()],
        )
    }

    fn load(&mut self) -> Result<(), CosignerError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_error(e)),
        };
        let corrupt = |line: usize, what: &'static str| CosignerError::Corrupt {
            path: self.path.clone(),
            line,
            what,
        };
        if bytes.len() > STATE_BYTES_MAX {
            return Err(corrupt(1, "the state file is larger than STATE_BYTES_MAX"));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| corrupt(1, "not UTF-8"))?;
        let inner = text
            .strip_suffix('\n')
            .ok_or_else(|| corrupt(1, "the file does not end with a newline (truncated)"))?;
        let (before, last) = inner
            .rsplit_once('\n')
            .ok_or_else(|| corrupt(1, "no MAC line (truncated)"))?;
        let body = &text[..before.len() + 1];
        let lines = body.lines().count() + 1;
        let tag = last
            .strip_prefix("mac ")
            .and_then(|t| B64.decode(t).ok())
            .ok_or_else(|| {
                corrupt(
                    lines,
                    "the last line is `mac` and a base64 MAC (truncated?)",
                )
            })?;
        if !self
            .hsm
            .verify_mac(self.mac_key, &self.mac_input(body), &tag)?
        {
            return Err(CosignerError::Tampered {
                path: self.path.clone(),
            });
        }
        let mut lines = body.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some(STATE_HEADER) {
            return Err(corrupt(1, "not a cosigner state file (header)"));
        }
        let mut latest = BTreeMap::new();
        for (n, line) in lines {
            let line_no = n + 1;
            let note = B64
                .decode(line)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| corrupt(line_no, "an entry is a base64 UTF-8 note"))?;
            let bad_note = |source| CosignerError::CorruptNote {
                path: self.path.clone(),
                line: line_no,
                source,
            };
            let note = SignedNote::parse(&note).map_err(bad_note)?;
            let cp = Checkpoint::parse(&note.text).map_err(bad_note)?;
            let timestamp = match self.verifier.verify(&note) {
                Ok(Some(t)) => t,
                Ok(None) => return Err(corrupt(line_no, "not a cosignature/v1 signature")),
                Err(source) => {
                    return Err(CosignerError::NotCosigned {
                        path: self.path.clone(),
                        line: line_no,
                        source,
                    })
                }
            };
            let entry = Latest {
                size: cp.size,
                root: cp.root,
                timestamp,
                note,
            };
            if latest.insert(cp.origin, entry).is_some() {
                return Err(corrupt(line_no, "a second entry for one origin"));
            }
        }
        self.by_hash = latest
            .keys()
            .map(|o| (origin_hash_hex(o), o.clone()))
            .collect();
        self.latest = latest;
        Ok(())
    }

    /// Writes `latest` as the state: temporary file, fsync, rename, directory fsync.
    fn persist(&self, latest: &BTreeMap<String, Latest>) -> Result<(), Refusal> {
        let mut body = format!("{STATE_HEADER}\n");
        for entry in latest.values() {
            body.push_str(&B64.encode(entry.note.encode()));
            body.push('\n');
        }
        let tag = self
            .hsm
            .mac(self.mac_key, &self.mac_input(&body))
            .map_err(Refusal::Hsm)?;
        let text = format!("{body}mac {}\n", B64.encode(tag));
        // R1-8: never write a state `open` would refuse to read back.
        if text.len() > STATE_BYTES_MAX {
            return Err(Refusal::State(CosignerError::StateTooLarge {
                len: text.len(),
                max: STATE_BYTES_MAX,
            }));
        }
        write_atomically(&self.path, text.as_bytes()).map_err(|e| Refusal::State(self.io_error(e)))
    }

    /// Checks the log's signatures on `note` for `origin`: every line naming a
    /// trusted key (name and key ID) must verify, lines of other keys are
    /// ignored, and at least one trusted key must have signed. Returns the
    /// verified lines.
    fn verify_log_signatures(
        &self,
        origin: &str,
        note: &SignedNote,
    ) -> Result<Vec<NoteSignature>, Refusal> {
        let keys = self
            .logs
            .get(origin)
            .ok_or_else(|| Refusal::UnknownOrigin(origin.to_string()))?;
        let mut verified = Vec::new();
        for sig in &note.signatures {
            for key in keys
                .iter()
                .filter(|k| k.name == sig.name && k.key_hash() == sig.key_hash)
            {
                let one = SignedNote {
                    text: note.text.clone(),
                    signatures: vec![sig.clone()],
                };
                key.verify(&one).map_err(Refusal::BadLogSignature)?;
                if !verified.contains(sig) {
                    verified.push(sig.clone());
                }
            }
        }
        if verified.is_empty() {
            return Err(Refusal::NotSignedByLog(origin.to_string()));
        }
        Ok(verified)
    }

    /// Handles `POST <prefix>/add-checkpoint` at time `now` (seconds since the
    /// Unix epoch): parses the body, verifies the log's signature, checks the old
    /// size against the latest cosigned size and the consistency proof, persists
    /// the new latest checkpoint, and returns the 200 body: this cosigner's
    /// `cosignature/v1` line. Anything else is a [`Refusal`] with its status.
    pub fn add_checkpoint(&mut self, body: &[u8], now: u64) -> Result<String, Refusal> {
        if self.poisoned {
            return Err(Refusal::State(CosignerError::Poisoned {
                path: self.path.clone(),
            }));
        }
        let request = AddCheckpoint::parse(body)?;
        let cp = Checkpoint::parse(&request.checkpoint.text).map_err(Refusal::MalformedNote)?;
        let log_signatures = self.verify_log_signatures(&cp.origin, &request.checkpoint)?;
        if request.old_size > cp.size {
            return Err(Refusal::OldSizeAfterCheckpoint {
                old_size: request.old_size,
                size: cp.size,
            });
        }
        let previous = self.latest.get(&cp.origin);
        let (latest_size, latest_root) = previous.map_or((0, empty_root()), |l| (l.size, l.root));
        if request.old_size != latest_size {
            return Err(Refusal::Conflict {
                old_size: request.old_size,
                latest: latest_size,
            });
        }
        if cp.size == 0 && cp.root != empty_root() {
            return Err(Refusal::NotEmptyRoot);
        }
        if request.old_size == 0 && !request.proof.is_empty() {
            return Err(Refusal::ProofForOldSizeZero(request.proof.len()));
        }
        if request.old_size == cp.size {
            if !request.proof.is_empty() {
                return Err(Refusal::BadProof(ProofError::Length {
                    got: request.proof.len(),
                    want: 0,
                }));
            }
            if cp.root != latest_root {
                return Err(Refusal::SameSizeDifferentRoot);
            }
        } else {
            verify_consistency(
                request.old_size,
                cp.size,
                &request.proof,
                &latest_root,
                &cp.root,
            )
            .map_err(Refusal::BadProof)?;
        }
        // R1-6: the checkpoint already cosigned, sent again (anyone can replay a
        // public checkpoint with `old` = its size): answer with the stored
        // cosignature, without a new signature or a write, so replays cost no
        // HSM call and no fsync.
        if let Some(stored) = previous
            .filter(|l| l.size == cp.size && l.note.text == request.checkpoint.text)
            .and_then(|l| {
                l.note.signatures.iter().find(|sig| {
                    sig.name == self.verifier.name && sig.key_hash == self.verifier.key_hash()
                })
            })
        {
            return Ok(stored.line());
        }
        let last = previous.map_or(0, |l| l.timestamp);
        if now == 0 || now < last || now > i64::MAX as u64 {
            return Err(Refusal::ClockBehind { now, last });
        }
        let cosignature = cosign(
            &self.hsm,
            self.key,
            &self.verifier.name,
            &request.checkpoint.text,
            now,
        )
        .map_err(|e| match e {
            NoteError::Hsm(e) => Refusal::Hsm(e),
            e => Refusal::Cosign(e),
        })?;
        let mut signatures = log_signatures;
        signatures.push(cosignature.clone());
        let entry = Latest {
            size: cp.size,
            root: cp.root,
            timestamp: now,
            note: SignedNote {
                text: request.checkpoint.text.clone(),
                signatures,
            },
        };
        debug_assert!(entry.size >= latest_size);
        debug_assert!(matches!(self.verifier.verify(&entry.note), Ok(Some(t)) if t == now));
        let mut latest = self.latest.clone();
        latest.insert(cp.origin.clone(), entry);
        // If the write fails after the rename, the file may hold the new entry
        // though memory does not: refuse everything until reopened. A refusal
        // before anything was written (the state too large, the HSM's MAC
        // failing) leaves the file as it was: only this checkpoint is refused
        // (R2-5).
        if let Err(e) = self.persist(&latest) {
            if matches!(e, Refusal::State(CosignerError::Io { .. })) {
                self.poisoned = true;
            }
            return Err(e);
        }
        self.by_hash
            .insert(origin_hash_hex(&cp.origin), cp.origin.clone());
        self.latest = latest;
        let line = cosignature.line();
        debug_assert!(line.starts_with(DASH) && line.ends_with('\n'));
        Ok(line)
    }

    /// Handles `GET <prefix>/<origin hash>/checkpoint`: the latest checkpoint
    /// cosigned for the origin whose lowercase hex SHA-256 is
    /// `origin_sha256_hex`, with the log signatures it verified and this
    /// cosigner's cosignature; `None` (a 404) if it never cosigned one.
    pub fn checkpoint_for(&self, origin_sha256_hex: &str) -> Option<String> {
        let origin = self.by_hash.get(origin_sha256_hex)?;
        self.latest.get(origin).map(|l| l.note.encode())
    }

    /// The size of the latest checkpoint cosigned for `origin` (0: none).
    pub fn latest_size(&self, origin: &str) -> u64 {
        self.latest.get(origin).map_or(0, |l| l.size)
    }

    /// This cosigner's `cosignature/v1` key, for logs and clients to pin.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// The verifier key string (`name+hash+base64(0x04 || key)`) to pin.
    pub fn vkey(&self) -> String {
        self.verifier.vkey()
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.verifier.public_key
    }
}

/// The most signature lines a merged note carries (Go's `note` package and
/// the `signed_note` crate refuse notes with more than 100).
pub const NOTE_SIGNATURES_MAX: usize = 100;

/// Log side: takes a 200 `add-checkpoint` response (signature lines) for
/// `note`, keeps the cosignatures that verify under one of `cosigners` and
/// appends those whose key has no line on the note yet (one per key, and at
/// most [`NOTE_SIGNATURES_MAX`] lines in all). Lines from unknown keys are ignored
/// ("The client MUST ignore any cosignatures from unknown keys"); a line that
/// names a known key (name and key ID) but does not verify, or carries a zero
/// timestamp, is an error. Returns the note and how many lines were added.
pub fn merge_cosignatures(
    note: &SignedNote,
    response: &str,
    cosigners: &[NoteVerifier],
) -> Result<(SignedNote, usize), NoteError> {
    if response.is_empty() {
        return Err(NoteError::Malformed(
            "a response holds one or more signature lines",
        ));
    }
    // "the client MAY concatenate it to the checkpoint, and use a note
    // verification function configured with the witness keys it trusts"
    let joined = SignedNote::parse(&format!("{}\n{response}", note.text))?;
    if joined.text != note.text {
        return Err(NoteError::Malformed(
            "a response holds only signature lines",
        ));
    }
    let mut out = note.clone();
    let mut added = 0;
    for sig in joined.signatures {
        for key in cosigners
            .iter()
            .filter(|k| k.name == sig.name && k.key_hash() == sig.key_hash)
        {
            let one = SignedNote {
                text: note.text.clone(),
                signatures: vec![sig.clone()],
            };
            if key.verify(&one)? == Some(0) {
                return Err(NoteError::Malformed("a cosignature's timestamp is never 0"));
            }
            // R1-3: one cosignature per key (a cosigner answering with many
            // timestamps would push the note past what standard tools read).
            let has_key = out
                .signatures
                .iter()
                .any(|s| s.name == sig.name && s.key_hash == sig.key_hash);
            if !has_key && out.signatures.len() < NOTE_SIGNATURES_MAX {
                out.signatures.push(sig.clone());
                added += 1;
            }
        }
    }
    Ok((out, added))
}

/// Log side: parses a 409 body (`text/x.tlog.size`): the latest cosigned size
/// in decimal, then a newline.
pub fn parse_tlog_size(body: &str) -> Result<u64, NoteError> {
    body.strip_suffix('\n')
        .filter(|n| canonical_decimal(n))
        .and_then(|n| n.parse().ok())
        .ok_or(NoteError::Malformed(
            "a text/x.tlog.size body is a decimal size and a newline",
        ))
}
