//! The served witness log (`[vault] witness_log_url`): fetching the
//! witness's C2SP tlog-tiles log and checking it before the node takes it
//! (its checkpoint signed by a pinned witness key valid now, cosigned as
//! `cosigners_required` says, its entries hashing to its root), and the
//! node's memory of it in the data directory: the accepted checkpoint
//! ([`SERVED_CHECKPOINT_FILE`]) every later served log must extend, a
//! verified copy of the log ([`SERVED_LOG_FILE`]) a start uses while the
//! witness is down, and the evidence of a fork ([`FORK_EVIDENCE_PREFIX`]).
//! [`crate::run`] calls it at a start and a reload.
// A fetch waits in wall-clock time (its deadline, the cancel poll).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vaultfleet_audit::note::NOTE_MAX;
use vaultfleet_audit::{Checkpoint, MerkleTree, NoteVerifier, SignedNote};
use vaultfleet_tlog::walk::{fetch_verified_log, FetchedLog, ENTRIES_MAX};
use vaultfleet_tlog::BaseUrl;

use crate::config::NodeConfig;
use crate::run::DataDirError;

/// The longest a start or a reload waits for the served witness log
/// (`[vault] witness_log_url`), every fetch included (each fetch has its own
/// deadline, [`vaultfleet_tlog::walk::FETCH_TIMEOUT`]).
pub const SERVED_LOG_TIMEOUT: Duration = Duration::from_secs(60);
/// The file in a data directory holding the last served checkpoint (the
/// signed note, `[vault] witness_log_url`) this node accepted: every later
/// served log, at a reload or a start, must extend it (its root at that size
/// is the note's). Like [`crate::run::EPOCH_FILE`] it is not authenticated.
pub const SERVED_CHECKPOINT_FILE: &str = "served-checkpoint";
/// The file in a data directory caching the last served log this node
/// accepted (its checkpoint note and its leaves): a start while the witness
/// cannot be reached starts from it, once it verifies again.
pub const SERVED_LOG_FILE: &str = "served-log";
/// The prefix of the evidence files a fork leaves in the data directory:
/// `served-fork-<id>.accepted.note` (the note accepted before) and
/// `served-fork-<id>.served.note` (the note that contradicts it), where
/// `<id>` is 32 hex digits of a SHA-256 of the two notes: a fork seen again
/// finds its pair already kept. Never overwritten; at most
/// [`FORK_EVIDENCE_PAIRS_MAX`] pairs.
pub const FORK_EVIDENCE_PREFIX: &str = "served-fork-";
/// The most pairs of fork evidence files a data directory keeps: a witness
/// showing ever new forks cannot fill the disk. Past it, a fork is still
/// refused ([`ServedLogError::ForkNotKept`]), its notes not written.
pub const FORK_EVIDENCE_PAIRS_MAX: usize = 16;
/// The most bytes of [`SERVED_LOG_FILE`] (a log of
/// [`ENTRIES_MAX`] entries of a few hundred bytes each fits).
pub const SERVED_LOG_BYTES_MAX: u64 = 64 << 20;
/// The first line of [`SERVED_LOG_FILE`].
const SERVED_LOG_MAGIC: &[u8] = b"vaultfleet served log v1\n";
/// How often a wait for a served log's fetch looks whether it was cancelled.
const FETCH_CANCEL_POLL: Duration = Duration::from_millis(20);

/// Why the served witness log (`[vault] witness_log_url`) is not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServedLogError {
    /// A fetch failed (the server is down, answered an error, or served
    /// something that is not a checkpoint or entry bundle), the checkpoint
    /// is not signed by a pinned `[[vault.witness_key]]`
    /// ([`WalkError::Unsigned`](vaultfleet_tlog::walk::WalkError::Unsigned)),
    /// or the entries do not hash to its root.
    #[error("fetching and rebuilding the served log")]
    Walk(#[source] vaultfleet_tlog::walk::WalkError),
    /// The whole fetch took longer than [`SERVED_LOG_TIMEOUT`].
    #[error("the served log was not fetched within {after:?}")]
    TimedOut {
        /// The bound.
        after: Duration,
    },
    /// The fetch's thread or runtime could not be started.
    #[error("starting the fetch's thread or runtime")]
    Runtime(#[source] std::io::Error),
    /// The fetch's thread ended without an answer.
    #[error("the fetch's thread ended without an answer")]
    Aborted,
    /// The node is stopping: the fetch was abandoned (its thread ends by its
    /// own deadline, its answer dropped).
    #[error("the fetch was cancelled: the node is stopping")]
    Cancelled,
    /// No pinned `[[vault.witness_key]]` is valid now (each is valid from its
    /// `not_before` until the next pinned key's).
    #[error("no pinned witness key is valid at {now} (Unix seconds)")]
    NoCurrentWitnessKey {
        /// The time checked.
        now: u64,
    },
    /// The served checkpoint carries fewer verifying cosignatures (non-zero
    /// timestamps) of distinct pinned `[[vault.cosigner]]` keys than
    /// `cosigners_required`.
    #[error(
        "the served checkpoint is cosigned by {found} of the pinned cosigners, {required} required"
    )]
    TooFewCosignatures {
        /// Distinct pinned cosigners whose cosignature verifies.
        found: usize,
        /// `[vault] cosigners_required`.
        required: usize,
    },
    /// The served checkpoint is older than the one this node accepted before
    /// (a replayed checkpoint, or a witness that lost its state).
    #[error("the served checkpoint has size {size}, older than size {accepted} this node accepted: a replayed or rolled-back checkpoint")]
    Stale {
        /// The served checkpoint's size.
        size: u64,
        /// The accepted checkpoint's size.
        accepted: u64,
    },
    /// The served log contradicts the checkpoint this node accepted before:
    /// its root at one of their sizes differs. Both notes are signed by a
    /// pinned witness key: the witness signed two histories. Both were kept
    /// as evidence files in the data directory.
    #[error("the served log's root at size {size} is not the one of the checkpoint this node accepted (size {accepted}): the witness signed two histories; both notes are kept as {accepted_note} and {served_note}", accepted_note = evidence.0.display(), served_note = evidence.1.display())]
    Fork {
        /// The size at which the roots differ.
        size: u64,
        /// The accepted checkpoint's size.
        accepted: u64,
        /// The evidence files: (the accepted note, the served note).
        evidence: (PathBuf, PathBuf),
    },
    /// The served log contradicts the accepted checkpoint and the evidence
    /// files could not be written (the refusal stands).
    #[error("the served log's root at size {size} is not the one of the checkpoint this node accepted (size {accepted}): the witness signed two histories; the evidence files could not be written in {}", dir.display())]
    ForkUnsaved {
        /// The size at which the roots differ.
        size: u64,
        /// The accepted checkpoint's size.
        accepted: u64,
        /// The data directory.
        dir: PathBuf,
        /// Why the evidence was not written.
        #[source]
        source: std::io::Error,
    },
    /// The served log contradicts the accepted checkpoint and the data
    /// directory already keeps [`FORK_EVIDENCE_PAIRS_MAX`] pairs of fork
    /// evidence: this pair was not written (the refusal stands).
    #[error("the served log's root at size {size} is not the one of the checkpoint this node accepted (size {accepted}): the witness signed two histories; {} already keeps {kept} pairs of fork evidence, this one was not written", dir.display())]
    ForkNotKept {
        /// The size at which the roots differ.
        size: u64,
        /// The accepted checkpoint's size.
        accepted: u64,
        /// The data directory.
        dir: PathBuf,
        /// The pairs it keeps.
        kept: usize,
    },
    /// A line under a pinned `[[vault.cosigner]]`'s name and key ID does not
    /// verify: the whole note is refused (C2SP signed-note: "If the key name
    /// and ID match a known key, verifiers MUST verify the signature").
    #[error("the served checkpoint's cosignatures")]
    Cosignature(#[source] vaultfleet_audit::BundleError),
    /// The served log was not usable at a start ([`ServedLogError::Walk`]
    /// and the others above, except a fork) and the data directory holds no
    /// cached copy ([`SERVED_LOG_FILE`]).
    #[error("the served log is not usable and there is no cached copy ({SERVED_LOG_FILE} in the data directory)")]
    NoCache(#[source] Box<ServedLogError>),
    /// The served log was not usable at a start and the cached copy does not
    /// verify (tampered, or no longer signed by a key valid now).
    #[error("the served log is not usable ({fetch}), and the cached copy {} does not verify", path.display())]
    BadCache {
        /// The cache file.
        path: PathBuf,
        /// Why the served log was not used.
        fetch: Box<ServedLogError>,
        /// Why the cache was not used.
        #[source]
        source: CacheError,
    },
    /// The accepted served checkpoint in the data directory
    /// ([`SERVED_CHECKPOINT_FILE`]) cannot be read or is not a checkpoint:
    /// restore it or remove it (the node then accepts any signed log once).
    #[error("the accepted served checkpoint {}", path.display())]
    Accepted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: CacheError,
    },
}

/// Why a cached served log ([`SERVED_LOG_FILE`]) or the accepted served
/// checkpoint ([`SERVED_CHECKPOINT_FILE`]) is not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// It cannot be read (or is larger than allowed).
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    /// It is not in the file's format.
    #[error("it is malformed: {0}")]
    Malformed(&'static str),
    /// Its checkpoint note does not parse.
    #[error("its checkpoint note")]
    Note(#[source] vaultfleet_audit::NoteError),
    /// Its checkpoint is for another log than `[vault] namespace`.
    #[error("its checkpoint is for {found:?}, not {expected:?}")]
    Origin {
        /// In the checkpoint.
        found: String,
        /// `[vault] namespace`.
        expected: String,
    },
    /// An entry is not a witness statement.
    #[error("entry {index}")]
    Entry {
        /// Its index.
        index: u64,
        /// What is wrong.
        #[source]
        source: vaultfleet_audit::witness::LeafError,
    },
    /// Its entries do not hash to its checkpoint's root.
    #[error("its entries do not hash to its checkpoint's root at size {size}")]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
    },
    /// Its checkpoint is not signed by a pinned witness key valid now.
    #[error("its checkpoint is not signed by a pinned witness key valid now")]
    Unsigned,
    /// Its checkpoint is not cosigned as `[vault] cosigners_required` says.
    #[error("its checkpoint is refused")]
    Refused(#[source] Box<ServedLogError>),
    /// It is older than the accepted served checkpoint.
    #[error("it has size {size}, older than size {accepted} this node accepted")]
    Stale {
        /// Its size.
        size: u64,
        /// The accepted checkpoint's.
        accepted: u64,
    },
    /// Its root at `size` is not the accepted served checkpoint's.
    #[error("its root at size {size} is not the one of the checkpoint this node accepted (size {accepted})")]
    Forked {
        /// The size.
        size: u64,
        /// The accepted checkpoint's.
        accepted: u64,
    },
}

/// A served log (`[vault] witness_log_url`) this node took: its signed
/// checkpoint, its leaves and their tree (whose root is the checkpoint's).
#[derive(Clone, Debug)]
pub(crate) struct ServedLog {
    pub(crate) note: SignedNote,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) leaves: Vec<Vec<u8>>,
    pub(crate) tree: MerkleTree,
}

/// A served log taken by a start or a reload.
#[derive(Clone, Debug)]
pub(crate) struct TakenLog {
    pub(crate) log: ServedLog,
    /// Fetched now (kept in the data directory once the node takes it), or
    /// the data directory's cache (already kept).
    pub(crate) fetched: bool,
}

/// What a served log must extend.
pub(crate) enum Prior {
    /// A start on a fresh data directory: nothing.
    Fresh,
    /// A start on this replica's data directory: the accepted checkpoint it
    /// keeps, and its cache as the fallback.
    DataDir(PathBuf),
    /// A reload: the served log in use (if the node follows one) and the
    /// data directory's accepted checkpoint, both.
    Reload {
        /// The data directory.
        data_dir: PathBuf,
        /// The served log in use.
        current: Option<ServedLog>,
    },
}

/// The checkpoint a served log must extend, and the tree it came with if
/// known (to tell a replayed older checkpoint from a fork).
struct Anchor {
    note: SignedNote,
    checkpoint: Checkpoint,
    tree: Option<MerkleTree>,
}

/// How a served log relates to the anchor, when it does not extend it.
enum Mismatch {
    /// Older than the anchor and, as far as the anchor's tree tells, its
    /// prefix.
    Stale,
    /// Another root at `size`.
    Fork {
        /// The size where the roots differ.
        size: u64,
    },
}

/// The pinned witness keys valid at `now` (from their `not_before` until
/// the next pinned key's, as `FleetVerifier` takes a bundle's checkpoint).
fn current_witness_keys(config: &NodeConfig, now: u64) -> Vec<NoteVerifier> {
    // `validate` checked the pins; a config that no longer holds them has no
    // key to accept the checkpoint with.
    let keys = config
        .witness_verifier_keys()
        .map(|(keys, _)| keys)
        .unwrap_or_default();
    keys.iter()
        .filter(|k| {
            let retired = keys
                .iter()
                .map(|o| o.not_before)
                .filter(|&nb| nb > k.not_before)
                .min();
            now >= k.not_before && retired.is_none_or(|r| now < r)
        })
        .filter_map(|k| NoteVerifier::ed25519(&k.name, k.public_key).ok())
        .collect()
}

/// Refuses `note` unless `[vault] cosigners_required` distinct pinned
/// cosigners cosigned it, by the bundle verifier's rule
/// ([`vaultfleet_audit::bundle::cosigned_by`]): a `cosignature/v1` line
/// that verifies with a non-zero timestamp (C2SP tlog-witness: "The
/// cosignature MUST NOT omit the timestamp, i.e. the timestamp MUST NOT be
/// zero."), and a line under a pinned cosigner's name and key ID that does
/// not verify refuses the note.
fn check_cosigners(config: &NodeConfig, note: &SignedNote) -> Result<(), ServedLogError> {
    let required = config.vault.cosigners_required;
    if required == 0 {
        return Ok(());
    }
    // `validate` checked the pins (a config that no longer holds them pins
    // fewer cosigners, and is refused for too few).
    let pins: Vec<NoteVerifier> = config
        .vault
        .cosigners
        .iter()
        .filter_map(|c| {
            let key = crate::hsm::parse_key_hex(&c.public_key).ok()?;
            NoteVerifier::cosignature(&c.name, key).ok()
        })
        .collect();
    let found = vaultfleet_audit::bundle::cosigned_by(note, &pins)
        .map_err(ServedLogError::Cosignature)?
        .len();
    if found < required {
        return Err(ServedLogError::TooFewCosignatures { found, required });
    }
    Ok(())
}

/// Whether `log` extends `anchor`: at least as long, and its root at the
/// anchor's size the anchor's (the consistency of the two checkpoints, with
/// the proof computed from `log`'s tree).
fn extends(anchor: &Anchor, log: &ServedLog) -> Result<(), Mismatch> {
    let (old, new) = (&anchor.checkpoint, &log.checkpoint);
    if new.size >= old.size {
        return match log.tree.root_at(old.size) {
            Ok(root) if root == old.root => Ok(()),
            _ => Err(Mismatch::Fork { size: old.size }),
        };
    }
    // Older: a fork if the anchor's tree has another root at its size.
    match &anchor.tree {
        Some(tree) if tree.root_at(new.size).is_ok_and(|r| r != new.root) => {
            Err(Mismatch::Fork { size: new.size })
        }
        _ => Err(Mismatch::Stale),
    }
}

/// The refusal of `log` against `anchor`: a stale one is just refused; a
/// fork is refused with both notes kept as evidence files in `data_dir`.
fn refuse(data_dir: &Path, anchor: &Anchor, log: &ServedLog, why: Mismatch) -> ServedLogError {
    let accepted = anchor.checkpoint.size;
    match why {
        Mismatch::Stale => ServedLogError::Stale {
            size: log.checkpoint.size,
            accepted,
        },
        Mismatch::Fork { size } => match save_fork_evidence(data_dir, &anchor.note, &log.note) {
            Ok(Kept::Full(kept)) => {
                tracing::error!(
                    size,
                    kept,
                    "the served witness log contradicts the checkpoint this node accepted: the witness signed two histories; the data directory already keeps the most fork evidence, this pair is not written"
                );
                ServedLogError::ForkNotKept {
                    size,
                    accepted,
                    dir: data_dir.to_path_buf(),
                    kept,
                }
            }
            Ok(Kept::Pair(evidence)) => {
                tracing::error!(
                    accepted_note = %evidence.0.display(),
                    served_note = %evidence.1.display(),
                    size,
                    "the served witness log contradicts the checkpoint this node accepted: the witness signed two histories; both signed notes are kept"
                );
                ServedLogError::Fork {
                    size,
                    accepted,
                    evidence,
                }
            }
            Err(source) => {
                tracing::error!(
                    size,
                    error = %source,
                    "the served witness log contradicts the checkpoint this node accepted, and the evidence could not be written"
                );
                ServedLogError::ForkUnsaved {
                    size,
                    accepted,
                    dir: data_dir.to_path_buf(),
                    source,
                }
            }
        },
    }
}

/// What became of a fork's evidence.
enum Kept {
    /// The pair's files (written now, or already kept).
    Pair((PathBuf, PathBuf)),
    /// Not written: the data directory keeps this many pairs already.
    Full(usize),
}

/// Keeps `accepted` and `served` as a pair of evidence files in `data_dir`
/// named by a hash of both ([`FORK_EVIDENCE_PREFIX`]): a pair already kept
/// is found, not written again; past [`FORK_EVIDENCE_PAIRS_MAX`] pairs
/// nothing is written. A file that could not be written whole is removed.
fn save_fork_evidence(
    data_dir: &Path,
    accepted: &SignedNote,
    served: &SignedNote,
) -> std::io::Result<Kept> {
    use vaultfleet_audit::merkle::{leaf_hash, node_hash};
    let (a_text, b_text) = (accepted.encode(), served.encode());
    let id = node_hash(&leaf_hash(a_text.as_bytes()), &leaf_hash(b_text.as_bytes()));
    let stem = format!("{FORK_EVIDENCE_PREFIX}{}", crate::hsm::hex(&id[..16]));
    let a = data_dir.join(format!("{stem}.accepted.note"));
    let b = data_dir.join(format!("{stem}.served.note"));
    if a.exists() && b.exists() {
        return Ok(Kept::Pair((a, b)));
    }
    let kept = std::fs::read_dir(data_dir)?
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.starts_with(FORK_EVIDENCE_PREFIX) && n.ends_with(".accepted.note")
            })
        })
        .count();
    if kept >= FORK_EVIDENCE_PAIRS_MAX {
        return Ok(Kept::Full(kept));
    }
    for (path, text) in [(&a, &a_text), (&b, &b_text)] {
        match crate::files::write_new(path, text.as_bytes()) {
            // Named by its content's hash: the one kept before (a crash
            // between the two writes left one of them).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    Ok(Kept::Pair((a, b)))
}

/// The served log of `[vault] namespace` at `url`, checked against `prior`
/// (see [`Prior`]): its checkpoint signed by a pinned witness key valid at
/// `now` (checked before any tile is fetched) and cosigned as
/// `[vault] cosigners_required` says, its entries hashing to its root, and
/// extending the checkpoint accepted before. At a start on this replica's
/// data directory, a served log that cannot be used (the witness down, a
/// refused or older checkpoint) gives way to the cached copy, verified
/// again; a fork is refused. Whether the bundle's checkpoint is a prefix of
/// it is [`BundleSource::new`]'s check.
pub(crate) fn served_log(
    config: &NodeConfig,
    url: &BaseUrl,
    prior: &Prior,
    cancel: &AtomicBool,
    now: u64,
) -> Result<TakenLog, ServedLogError> {
    let fetched = fetch_checked(config, url, cancel, now);
    match prior {
        Prior::Fresh => fetched.map(|log| TakenLog { log, fetched: true }),
        Prior::Reload { data_dir, current } => {
            let log = fetched?;
            // Both the log in use and the accepted checkpoint on disk: a
            // reload that kept a newer one and then failed to swap leaves the
            // disk ahead of the memory, and a replay or a fork between the two
            // must not pass.
            if let Some(c) = current {
                let anchor = Anchor {
                    note: c.note.clone(),
                    checkpoint: c.checkpoint.clone(),
                    tree: Some(c.tree.clone()),
                };
                extends(&anchor, &log).map_err(|why| refuse(data_dir, &anchor, &log, why))?;
            }
            let disk = read_anchor(data_dir, &config.vault.namespace)?;
            if let Some(a) = disk.filter(|a| current.as_ref().is_none_or(|c| c.note != a.note)) {
                let mut anchor = a;
                if log.checkpoint.size < anchor.checkpoint.size {
                    // The cache (kept with the anchor) tells a replay from a
                    // fork.
                    anchor.tree = load_cache(config, data_dir, Some(&anchor), now)
                        .ok()
                        .flatten()
                        .map(|c| c.tree);
                }
                extends(&anchor, &log).map_err(|why| refuse(data_dir, &anchor, &log, why))?;
            }
            Ok(TakenLog { log, fetched: true })
        }
        Prior::DataDir(data_dir) => {
            let anchor = read_anchor(data_dir, &config.vault.namespace)?;
            // The cache, read at most once, and only if needed.
            let mut cache: Option<Result<Option<ServedLog>, CacheError>> = None;
            let why = match (fetched, &anchor) {
                (Ok(log), None) => return Ok(TakenLog { log, fetched: true }),
                (Ok(log), Some(a)) => {
                    let mut anchor = Anchor {
                        note: a.note.clone(),
                        checkpoint: a.checkpoint.clone(),
                        tree: None,
                    };
                    if log.checkpoint.size < a.checkpoint.size {
                        // The cache's tree tells a replay from a fork.
                        let loaded = load_cache(config, data_dir, Some(a), now);
                        anchor.tree = loaded.as_ref().ok().cloned().flatten().map(|c| c.tree);
                        cache = Some(loaded);
                    }
                    match extends(&anchor, &log) {
                        Ok(()) => return Ok(TakenLog { log, fetched: true }),
                        Err(Mismatch::Stale) => refuse(data_dir, &anchor, &log, Mismatch::Stale),
                        Err(fork) => return Err(refuse(data_dir, &anchor, &log, fork)),
                    }
                }
                (Err(ServedLogError::Cancelled), _) => return Err(ServedLogError::Cancelled),
                (Err(e), _) => e,
            };
            let cache = cache.unwrap_or_else(|| load_cache(config, data_dir, anchor.as_ref(), now));
            match cache {
                Ok(Some(log)) => {
                    tracing::warn!(
                        url = ?url,
                        error = %why,
                        size = log.checkpoint.size,
                        "the served witness log is not usable: starting from the copy kept in the data directory, verified again"
                    );
                    Ok(TakenLog {
                        log,
                        fetched: false,
                    })
                }
                Ok(None) => Err(ServedLogError::NoCache(Box::new(why))),
                Err(source) => Err(ServedLogError::BadCache {
                    path: data_dir.join(SERVED_LOG_FILE),
                    fetch: Box::new(why),
                    source,
                }),
            }
        }
    }
}

/// Fetches the served log (its checkpoint signed by a pinned witness key
/// valid at `now`) and checks its cosignatures.
fn fetch_checked(
    config: &NodeConfig,
    url: &BaseUrl,
    cancel: &AtomicBool,
    now: u64,
) -> Result<ServedLog, ServedLogError> {
    let keys = current_witness_keys(config, now);
    if keys.is_empty() {
        return Err(ServedLogError::NoCurrentWitnessKey { now });
    }
    let fetched = fetch_served_log(
        url,
        &config.vault.namespace,
        keys,
        SERVED_LOG_TIMEOUT,
        cancel,
    )?;
    check_cosigners(config, &fetched.note)?;
    let leaves = fetched
        .entries
        .iter()
        .map(|w| vaultfleet_audit::witness::leaf_bytes(&w.statement, &w.key, &w.signature))
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|leaves| tree_of(leaves).root() == fetched.tree.root())
        .ok_or(ServedLogError::Walk(
            vaultfleet_tlog::walk::WalkError::RootMismatch {
                size: fetched.checkpoint.size,
            },
        ))?;
    Ok(ServedLog {
        note: fetched.note,
        checkpoint: fetched.checkpoint,
        leaves,
        tree: fetched.tree,
    })
}

/// The Merkle tree of `leaves`.
fn tree_of(leaves: &[Vec<u8>]) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for leaf in leaves {
        tree.append(leaf);
    }
    tree
}

/// The accepted served checkpoint kept in `data_dir`, if any and of
/// `namespace` (one of another namespace is another log's: ignored).
fn read_anchor(data_dir: &Path, namespace: &str) -> Result<Option<Anchor>, ServedLogError> {
    let path = data_dir.join(SERVED_CHECKPOINT_FILE);
    let bad = |source| ServedLogError::Accepted {
        path: path.clone(),
        source,
    };
    let bytes = match crate::files::read_capped(&path, NOTE_MAX as u64) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(CacheError::Read(e))),
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| bad(CacheError::Malformed("the note is not UTF-8")))?;
    let note = SignedNote::parse(&text).map_err(|e| bad(CacheError::Note(e)))?;
    let checkpoint = Checkpoint::parse(&note.text).map_err(|e| bad(CacheError::Note(e)))?;
    if checkpoint.origin != namespace {
        tracing::warn!(
            path = %path.display(),
            origin = checkpoint.origin,
            namespace,
            "the accepted served checkpoint is of another namespace: not used"
        );
        return Ok(None);
    }
    Ok(Some(Anchor {
        note,
        checkpoint,
        tree: None,
    }))
}

/// The served log `data_dir` caches, verified as a served one at `now`: its
/// entries hash to its checkpoint's root, its checkpoint is signed by a
/// pinned witness key valid now and cosigned as required, and it extends
/// `anchor`. `None` if there is no cache.
fn load_cache(
    config: &NodeConfig,
    data_dir: &Path,
    anchor: Option<&Anchor>,
    now: u64,
) -> Result<Option<ServedLog>, CacheError> {
    let path = data_dir.join(SERVED_LOG_FILE);
    let bytes = match crate::files::read_capped(&path, SERVED_LOG_BYTES_MAX) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::Read(e)),
    };
    let (text, leaves) = decode_cache(&bytes)?;
    let note = SignedNote::parse(&text).map_err(CacheError::Note)?;
    let checkpoint = Checkpoint::parse(&note.text).map_err(CacheError::Note)?;
    if checkpoint.origin != config.vault.namespace {
        return Err(CacheError::Origin {
            found: checkpoint.origin,
            expected: config.vault.namespace.clone(),
        });
    }
    let signed = current_witness_keys(config, now)
        .iter()
        .any(|k| k.verify(&note).is_ok());
    if !signed {
        return Err(CacheError::Unsigned);
    }
    check_cosigners(config, &note).map_err(|e| CacheError::Refused(Box::new(e)))?;
    if leaves.len() as u64 != checkpoint.size {
        return Err(CacheError::RootMismatch {
            size: checkpoint.size,
        });
    }
    for (index, leaf) in (0u64..).zip(&leaves) {
        vaultfleet_audit::witness::parse_leaf(leaf, index)
            .map_err(|source| CacheError::Entry { index, source })?;
    }
    let tree = tree_of(&leaves);
    if tree.root() != checkpoint.root {
        return Err(CacheError::RootMismatch {
            size: checkpoint.size,
        });
    }
    let log = ServedLog {
        note,
        checkpoint,
        leaves,
        tree,
    };
    if let Some(anchor) = anchor {
        let accepted = anchor.checkpoint.size;
        extends(anchor, &log).map_err(|why| match why {
            Mismatch::Stale => CacheError::Stale {
                size: log.checkpoint.size,
                accepted,
            },
            Mismatch::Fork { size } => CacheError::Forked { size, accepted },
        })?;
    }
    Ok(Some(log))
}

/// The cache file's bytes: [`SERVED_LOG_MAGIC`], the note's length (u32, big
/// endian) and bytes, the number of leaves (u64, big endian), and each leaf
/// as in a C2SP entry bundle (a u16 big-endian length, then its bytes).
/// `None` if a leaf is longer than an entry bundle holds, or the whole is
/// larger than [`SERVED_LOG_BYTES_MAX`].
fn encode_cache(log: &ServedLog) -> Option<Vec<u8>> {
    let note = log.note.encode();
    let mut out = Vec::with_capacity(
        SERVED_LOG_MAGIC.len()
            + 12
            + note.len()
            + log.leaves.iter().map(|l| 2 + l.len()).sum::<usize>(),
    );
    out.extend_from_slice(SERVED_LOG_MAGIC);
    out.extend_from_slice(&u32::try_from(note.len()).ok()?.to_be_bytes());
    out.extend_from_slice(note.as_bytes());
    out.extend_from_slice(&(log.leaves.len() as u64).to_be_bytes());
    for leaf in &log.leaves {
        out.extend_from_slice(&u16::try_from(leaf.len()).ok()?.to_be_bytes());
        out.extend_from_slice(leaf);
    }
    (out.len() as u64 <= SERVED_LOG_BYTES_MAX).then_some(out)
}

/// The note text and the leaves of a cache file ([`encode_cache`]).
fn decode_cache(bytes: &[u8]) -> Result<(String, Vec<Vec<u8>>), CacheError> {
    fn take<'a>(rest: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], CacheError> {
        if rest.len() < n {
            return Err(CacheError::Malformed(what));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    let mut rest = bytes;
    if take(
        &mut rest,
        SERVED_LOG_MAGIC.len(),
        "too short for its first line",
    )? != SERVED_LOG_MAGIC
    {
        return Err(CacheError::Malformed(
            "not a served log cache (its first line)",
        ));
    }
    let len = take(&mut rest, 4, "the note's length is cut")?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > NOTE_MAX {
        return Err(CacheError::Malformed(
            "the note is longer than a note may be",
        ));
    }
    let note = std::str::from_utf8(take(&mut rest, len, "the note is cut")?)
        .map_err(|_| CacheError::Malformed("the note is not UTF-8"))?
        .to_string();
    let count = take(&mut rest, 8, "the number of leaves is cut")?;
    let mut n = [0u8; 8];
    n.copy_from_slice(count);
    let count = u64::from_be_bytes(n);
    if count > ENTRIES_MAX {
        return Err(CacheError::Malformed(
            "more leaves than a served log may have",
        ));
    }
    // Each leaf takes at least its two length bytes: the count is bounded by
    // the bytes left before anything is allocated.
    if count > (rest.len() / 2) as u64 {
        return Err(CacheError::Malformed("more leaves than bytes"));
    }
    let mut leaves = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = take(&mut rest, 2, "a leaf's length is cut")?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        leaves.push(take(&mut rest, len, "a leaf is cut")?.to_vec());
    }
    if !rest.is_empty() {
        return Err(CacheError::Malformed("bytes after the last leaf"));
    }
    Ok((note, leaves))
}

/// Keeps `log` as the accepted served log, if it extends the accepted
/// checkpoint on disk now (read again: another writer may have moved it;
/// the caller serialises its own writers): the cache first (removed, with a
/// warning, if too large to cache, so a later start finds no cache rather
/// than a stale one), then the accepted checkpoint, each written to a
/// temporary, synced and renamed. A crash between the two leaves a cache
/// newer than the accepted checkpoint, which extends it. A log that does not
/// extend the one on disk is not written ([`DataDirError::ServedLog`]; a
/// fork's notes are kept as evidence).
pub(crate) fn keep_served_log(
    data_dir: &Path,
    namespace: &str,
    log: &ServedLog,
) -> Result<(), DataDirError> {
    let refused = |e| DataDirError::ServedLog(Box::new(e));
    if let Some(anchor) = read_anchor(data_dir, namespace).map_err(refused)? {
        extends(&anchor, log).map_err(|why| refused(refuse(data_dir, &anchor, log, why)))?;
    }
    let io = |p: PathBuf| move |source| DataDirError::Io { path: p, source };
    let cache = data_dir.join(SERVED_LOG_FILE);
    match encode_cache(log) {
        Some(bytes) => crate::files::write_replacing(&cache, &bytes).map_err(io(cache))?,
        None => {
            tracing::warn!(
                size = log.checkpoint.size,
                "the served log is too large to cache: a start while the witness is down will be refused"
            );
            match std::fs::remove_file(&cache) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(cache)(e)),
            }
        }
    }
    let path = data_dir.join(SERVED_CHECKPOINT_FILE);
    crate::files::write_replacing(&path, log.note.encode().as_bytes()).map_err(io(path))
}

/// Fetches `namespace`'s log at `url` (its checkpoint signed by one of
/// `keys`) within `bound`, on a thread of its own with a runtime of its own
/// (a start or a reload may be called from inside an async runtime, where
/// blocking on another one would panic). The caller waits for its answer or
/// for `cancel`: a cancelled fetch's thread is left to end by its deadline,
/// its answer dropped.
fn fetch_served_log(
    url: &BaseUrl,
    namespace: &str,
    keys: Vec<NoteVerifier>,
    bound: Duration,
    cancel: &AtomicBool,
) -> Result<FetchedLog, ServedLogError> {
    if cancel.load(Ordering::SeqCst) {
        return Err(ServedLogError::Cancelled);
    }
    let url = url.clone();
    let namespace = namespace.to_string();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    // Detached: it ends within `bound`.
    std::thread::Builder::new()
        .name("vaultfleet-witness-log".into())
        .spawn(move || {
            let answer = vaultfleet_tlog::walk::block_on(async {
                let walk = fetch_verified_log(&url, &namespace, &keys, ENTRIES_MAX);
                tokio::time::timeout(bound, walk).await
            });
            // The caller may be gone (cancelled): the answer is dropped.
            let _ = tx.send(answer);
        })
        .map_err(ServedLogError::Runtime)?;
    loop {
        match rx.recv_timeout(FETCH_CANCEL_POLL) {
            Ok(Ok(Ok(Ok(log)))) => return Ok(log),
            Ok(Ok(Ok(Err(walk)))) => return Err(ServedLogError::Walk(walk)),
            Ok(Ok(Err(_elapsed))) => return Err(ServedLogError::TimedOut { after: bound }),
            Ok(Err(runtime)) => return Err(ServedLogError::Runtime(runtime)),
            // The thread ended without sending: it panicked.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ServedLogError::Aborted)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if cancel.load(Ordering::SeqCst) {
                    return Err(ServedLogError::Cancelled);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A served log of `leaves` in namespace `ns`, its note carrying a
    /// stand-in signature line (nothing here verifies it).
    fn log_of(leaves: &[Vec<u8>]) -> ServedLog {
        let tree = tree_of(leaves);
        let checkpoint = Checkpoint {
            origin: "ns".into(),
            size: leaves.len() as u64,
            root: tree.root(),
            extensions: vec![],
        };
        ServedLog {
            note: SignedNote {
                text: checkpoint.body(),
                signatures: vec![vaultfleet_audit::NoteSignature {
                    name: "witness".into(),
                    key_hash: [1, 2, 3, 4],
                    payload: vec![9; 64],
                }],
            },
            checkpoint,
            leaves: leaves.to_vec(),
            tree,
        }
    }

    fn kept_size(dir: &Path) -> u64 {
        read_anchor(dir, "ns").unwrap().unwrap().checkpoint.size
    }

    /// R3-2 (third review of issue 16): the accepted checkpoint on disk is
    /// read again before it is replaced, and never replaced by a log that
    /// does not extend it (another writer, a reload or a second node on the
    /// data directory, kept a newer one meanwhile).
    #[test]
    fn r3_2_a_kept_served_log_never_goes_back_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let leaves: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10]).collect();
        let (two, three) = (log_of(&leaves[..2]), log_of(&leaves));
        keep_served_log(dir.path(), "ns", &two).unwrap();
        keep_served_log(dir.path(), "ns", &three).unwrap();
        assert_eq!(kept_size(dir.path()), 3);
        // The older one, kept last: refused, the disk unchanged.
        let e = keep_served_log(dir.path(), "ns", &two).unwrap_err();
        assert!(
            matches!(&e, DataDirError::ServedLog(b) if matches!(**b, ServedLogError::Stale { size: 2, accepted: 3 })),
            "{e:?}"
        );
        assert_eq!(kept_size(dir.path()), 3);
        let cached = decode_cache(&std::fs::read(dir.path().join(SERVED_LOG_FILE)).unwrap());
        assert_eq!(cached.unwrap().1.len(), 3, "the cache unchanged");
        // Another history at size 3: refused as a fork, both notes kept.
        let other = log_of(&[leaves[0].clone(), leaves[1].clone(), vec![7; 10]]);
        let e = keep_served_log(dir.path(), "ns", &other).unwrap_err();
        assert!(
            matches!(&e, DataDirError::ServedLog(b) if matches!(**b, ServedLogError::Fork { size: 3, .. })),
            "{e:?}"
        );
        assert_eq!(kept_size(dir.path()), 3);
        assert_eq!(
            read_anchor(dir.path(), "ns").unwrap().unwrap().note,
            three.note
        );
    }

    /// R3-8: a served log too large to cache removes the older cache, so a
    /// later start finds no cache ([`ServedLogError::NoCache`]) rather than
    /// a stale one.
    #[test]
    fn r3_8_a_log_too_large_to_cache_removes_the_stale_cache() {
        let dir = tempfile::tempdir().unwrap();
        let small = log_of(&[vec![1; 10]]);
        keep_served_log(dir.path(), "ns", &small).unwrap();
        assert!(dir.path().join(SERVED_LOG_FILE).exists());
        // A leaf longer than an entry bundle holds (u16 length).
        let large = log_of(&[vec![1; 10], vec![2; usize::from(u16::MAX) + 1]]);
        assert!(encode_cache(&large).is_none());
        keep_served_log(dir.path(), "ns", &large).unwrap();
        assert_eq!(kept_size(dir.path()), 2, "the checkpoint is kept");
        assert!(
            !dir.path().join(SERVED_LOG_FILE).exists(),
            "the stale cache is removed"
        );
        // And again, with no cache to remove.
        keep_served_log(dir.path(), "ns", &large).unwrap();
    }

    /// The served log's cache round-trips, and a hostile file is refused
    /// before anything large is allocated.
    #[test]
    fn the_served_log_cache_decodes_only_what_it_encodes() {
        let leaves = vec![b"one".to_vec(), Vec::new(), vec![7; 300]];
        let tree = tree_of(&leaves);
        let checkpoint = Checkpoint {
            origin: "ns".into(),
            size: 3,
            root: tree.root(),
            extensions: vec![],
        };
        let log = ServedLog {
            note: SignedNote {
                text: checkpoint.body(),
                signatures: vec![],
            },
            checkpoint,
            leaves: leaves.clone(),
            tree,
        };
        let bytes = encode_cache(&log).unwrap();
        let (text, back) = decode_cache(&bytes).unwrap();
        assert_eq!(text, log.note.encode());
        assert_eq!(back, leaves);
        for cut in 0..bytes.len() {
            assert!(decode_cache(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_cache(&longer).is_err(), "trailing bytes");
        // A count of 2^40 leaves in a few bytes: refused, nothing reserved.
        let at = SERVED_LOG_MAGIC.len() + 4 + text.len();
        let mut huge = bytes;
        huge[at..at + 8].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(decode_cache(&huge), Err(CacheError::Malformed(_))));
        let mut many = encode_cache(&log).unwrap();
        many[at..at + 8].copy_from_slice(&1000u64.to_be_bytes());
        assert!(matches!(
            decode_cache(&many),
            Err(CacheError::Malformed("more leaves than bytes"))
        ));
    }
}
