//! The auditor's side of a served log: fetch a namespace's checkpoint and
//! every entry bundle (C2SP tlog-tiles), rebuild the tree, and refuse a log
//! whose entries do not hash to the checkpoint's root. What a walk returns is
//! then checked like the witness's own state file (`vaultfleet audit log`):
//! each statement's signature under the pinned keys, the epochs in order,
//! every checkpoint collected before consistent with this one.
//!
//! [`bundle_in_log`] is the split-view check: a bundle a client received must
//! name a checkpoint of *this* log (same root at its size) and its statement
//! must be the log's leaf at its index. A bundle from a forked log, shown to
//! one client and never published, fails it.

use std::future::Future;
use std::time::Duration;

use vaultfleet_audit::merkle::MerkleTree;
use vaultfleet_audit::note::{NoteError, NoteVerifier, SignedNote, ALG_ED25519, NOTE_MAX};
use vaultfleet_audit::tiles::{
    entry_bundles_for, hash_tiles_for, parse_entry_bundle, parse_hash_tile, TileError, TilePath,
    ENTRY_BUNDLE_BYTES_MAX, HASH_TILE_BYTES_MAX,
};
use vaultfleet_audit::witness::{leaf_bytes, parse_leaf, LeafError};
use vaultfleet_audit::{Bundle, Checkpoint, Witnessed};

use crate::client::{BaseUrl, HttpError};

/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// The most entries a walk accepts by default: one entry per fleet epoch, so
/// far more than a fleet ever has; a larger checkpoint is refused before any
/// tile is fetched.
pub const ENTRIES_MAX: u64 = 100_000;
/// How long a whole walk may take.
pub const WALK_TIMEOUT: Duration = Duration::from_secs(600);

/// A served log, fetched and rebuilt.
#[derive(Debug, Clone)]
pub struct FetchedLog {
    /// The checkpoint note as served (its signatures are the caller's to check).
    pub note: SignedNote,
    /// Its body.
    pub checkpoint: Checkpoint,
    /// Every entry, decoded, in log order.
    pub entries: Vec<Witnessed>,
    /// The tree the entries make (its root is the checkpoint's).
    pub tree: MerkleTree,
}

/// A served log that could not be fetched, or does not hold together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// A fetch failed.
    #[error("fetching {path}: {source}")]
    Fetch {
        /// What was fetched.
        path: String,
        /// Why it failed.
        #[source]
        source: HttpError,
    },
    /// The server answered something other than 200.
    #[error("fetching {path}: status {status}")]
    Status {
        /// What was fetched.
        path: String,
        /// The status.
        status: u16,
    },
    /// The checkpoint is not a note, or not a checkpoint.
    #[error("the served checkpoint: {0}")]
    Checkpoint(#[source] NoteError),
    /// The checkpoint is for another log.
    #[error("the served checkpoint's origin is {got:?}, not {want:?}")]
    Origin {
        /// In the checkpoint.
        got: String,
        /// Asked for.
        want: String,
    },
    /// An entry bundle does not parse.
    #[error("entry bundle {path}: {source}")]
    Bundle {
        /// Its path.
        path: String,
        /// What is wrong.
        #[source]
        source: TileError,
    },
    /// An entry is not a witness statement.
    #[error("entry {index}: {source}")]
    Entry {
        /// Its index.
        index: u64,
        /// What is wrong.
        #[source]
        source: LeafError,
    },
    /// The checkpoint is not signed by any pinned witness key: nothing is
    /// fetched for it.
    #[error("the served checkpoint is not signed by a pinned witness key")]
    Unsigned,
    /// The checkpoint is larger than the walk accepts.
    #[error("the served checkpoint has {size} entries, more than the {max} accepted (raise the limit only for a log you expect to be that large)")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The walk took longer than [`WALK_TIMEOUT`].
    #[error("the walk did not finish within {0:?}")]
    Timeout(Duration),
    /// The entries do not hash to the checkpoint's root: the log served
    /// entries other than the ones it signed.
    #[error("the served entries do not hash to the checkpoint's root at size {size}")]
    RootMismatch {
        /// The checkpoint's size.
        size: u64,
    },
}

/// Fetches `namespace`'s log below `url` and rebuilds it, once its checkpoint
/// verified under one of `witness_keys` (Ed25519 note keys) and names at most
/// `max_entries` entries; the whole walk is bounded by [`WALK_TIMEOUT`]. A
/// checkpoint nobody pinned signed costs one request, never a walk.
pub async fn fetch_verified_log(
    url: &BaseUrl,
    namespace: &str,
    witness_keys: &[NoteVerifier],
    max_entries: u64,
) -> Result<FetchedLog, WalkError> {
    tokio::time::timeout(
        WALK_TIMEOUT,
        walk(url, namespace, (witness_keys, max_entries)),
    )
    .await
    .map_err(|_| WalkError::Timeout(WALK_TIMEOUT))?
}

/// Fetches `namespace`'s checkpoint and checks it: its origin, then its
/// signature under one of the pinned keys, then its size against the limit.
async fn fetch_checkpoint(
    url: &BaseUrl,
    namespace: &str,
    pins: (&[NoteVerifier], u64),
) -> Result<(SignedNote, Checkpoint), WalkError> {
    let path = format!("/{namespace}/checkpoint");
    let text = fetch(url, &path, NOTE_MAX).await?;
    let text = String::from_utf8(text)
        .map_err(|_| WalkError::Checkpoint(NoteError::Malformed("the checkpoint is not UTF-8")))?;
    let note = SignedNote::parse(&text).map_err(WalkError::Checkpoint)?;
    let checkpoint = Checkpoint::parse(&note.text).map_err(WalkError::Checkpoint)?;
    if checkpoint.origin != namespace {
        return Err(WalkError::Origin {
            got: checkpoint.origin,
            want: namespace.to_string(),
        });
    }
    let (keys, max) = pins;
    // R1-2: the signature before any tile, so an unsigned checkpoint of a
    // huge size costs one request.
    let signed = keys
        .iter()
        .any(|k| k.alg == ALG_ED25519 && k.verify(&note).is_ok());
    if !signed {
        return Err(WalkError::Unsigned);
    }
    if checkpoint.size > max {
        return Err(WalkError::TooLarge {
            size: checkpoint.size,
            max,
        });
    }
    Ok((note, checkpoint))
}

async fn walk(
    url: &BaseUrl,
    namespace: &str,
    pins: (&[NoteVerifier], u64),
) -> Result<FetchedLog, WalkError> {
    let (note, checkpoint) = fetch_checkpoint(url, namespace, pins).await?;
    let mut tree = MerkleTree::new();
    let mut entries = Vec::new();
    for tile in entry_bundles_for(checkpoint.size) {
        let TilePath::Entries { width, .. } = tile else {
            continue;
        };
        let path = format!("/{namespace}/{}", tile.encode());
        let bytes = fetch(url, &path, ENTRY_BUNDLE_BYTES_MAX).await?;
        let leaves = parse_entry_bundle(&bytes, width).map_err(|source| WalkError::Bundle {
            path: path.clone(),
            source,
        })?;
        for leaf in leaves {
            let index = tree.size();
            let w =
                parse_leaf(&leaf, index).map_err(|source| WalkError::Entry { index, source })?;
            tree.append(&leaf);
            entries.push(w);
        }
    }
    if tree.size() != checkpoint.size || tree.root() != checkpoint.root {
        return Err(WalkError::RootMismatch {
            size: checkpoint.size,
        });
    }
    Ok(FetchedLog {
        note,
        checkpoint,
        entries,
        tree,
    })
}

/// A served log's tree, rebuilt from its level-0 hash tiles (32 bytes a
/// leaf, the entries themselves not fetched): what a client that only wants
/// proofs fetches.
#[derive(Debug, Clone)]
pub struct FetchedTree {
    /// The checkpoint note as served (verified under a pinned key).
    pub note: SignedNote,
    /// Its body.
    pub checkpoint: Checkpoint,
    /// The tree the leaf hashes make (its root is the checkpoint's).
    pub tree: MerkleTree,
}

/// Fetches `namespace`'s checkpoint (signed by one of `witness_keys`, at
/// most `max_entries`) and its level-0 hash tiles, and rebuilds the tree.
pub async fn fetch_verified_tree(
    url: &BaseUrl,
    namespace: &str,
    witness_keys: &[NoteVerifier],
    max_entries: u64,
) -> Result<FetchedTree, WalkError> {
    let fetch_tree = async {
        let (note, checkpoint) =
            fetch_checkpoint(url, namespace, (witness_keys, max_entries)).await?;
        let mut leaves = Vec::new();
        for tile in hash_tiles_for(checkpoint.size).take_while(|t| t.level() == 0) {
            let path = format!("/{namespace}/{}", tile.encode());
            let bytes = fetch(url, &path, HASH_TILE_BYTES_MAX).await?;
            let hashes =
                parse_hash_tile(&bytes, tile.width()).map_err(|source| WalkError::Bundle {
                    path: path.clone(),
                    source,
                })?;
            leaves.extend(hashes);
        }
        let tree = MerkleTree::from_leaf_hashes(leaves);
        if tree.size() != checkpoint.size || tree.root() != checkpoint.root {
            return Err(WalkError::RootMismatch {
                size: checkpoint.size,
            });
        }
        Ok(FetchedTree {
            note,
            checkpoint,
            tree,
        })
    };
    tokio::time::timeout(WALK_TIMEOUT, fetch_tree)
        .await
        .map_err(|_| WalkError::Timeout(WALK_TIMEOUT))?
}

/// A client's check that the served log extends the checkpoint it last
/// accepted (`old_size`, `old_root`): the consistency proof is computed from
/// the served tree and verified against both roots, so a log that rewrote
/// the client's checkpoint is refused. Returns the proof (what a vault reply
/// would have carried).
pub fn extends(
    served: &FetchedTree,
    old_size: u64,
    old_root: &vaultfleet_audit::merkle::Hash,
) -> Result<vaultfleet_audit::ConsistencyProof, SplitView> {
    let new_size = served.checkpoint.size;
    if old_size > new_size {
        return Err(SplitView::AheadOfLog {
            bundle: old_size,
            served: new_size,
        });
    }
    let proof = vaultfleet_audit::ConsistencyProof::between(&served.tree, old_size, new_size)
        .map_err(|_| SplitView::Forked { size: old_size })?;
    vaultfleet_audit::merkle::verify_consistency(
        old_size,
        new_size,
        &proof.hashes,
        old_root,
        &served.checkpoint.root,
    )
    .map_err(|_| SplitView::Forked { size: old_size })?;
    Ok(proof)
}

async fn fetch(url: &BaseUrl, path: &str, max: usize) -> Result<Vec<u8>, WalkError> {
    let answer = url
        .get(path, max, FETCH_TIMEOUT)
        .await
        .map_err(|source| WalkError::Fetch {
            path: path.to_string(),
            source,
        })?;
    if answer.status != 200 {
        return Err(WalkError::Status {
            path: path.to_string(),
            status: answer.status,
        });
    }
    Ok(answer.body.to_vec())
}

/// Why a bundle is not in the served log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SplitView {
    /// The bundle's checkpoint does not parse.
    #[error("the bundle's checkpoint: {0}")]
    Checkpoint(#[source] NoteError),
    /// The bundle is for another log.
    #[error("the bundle's checkpoint is for {got:?}, the served log is {want:?}")]
    Origin {
        /// The bundle's.
        got: String,
        /// The served log's.
        want: String,
    },
    /// The bundle's checkpoint is larger than the served one: the log showed
    /// the client a tree it has not published (yet, or ever).
    #[error("the bundle's checkpoint has size {bundle}, the served log only {served}: fetch again later; if it stays so, the log showed the client an unpublished tree")]
    AheadOfLog {
        /// The bundle's checkpoint size.
        bundle: u64,
        /// The served size.
        served: u64,
    },
    /// The served log has another root at the bundle's checkpoint size.
    #[error("the served log's root at size {size} is not the bundle's: the client was shown a forked log")]
    Forked {
        /// The size.
        size: u64,
    },
    /// The log's leaf at the bundle's index is not the bundle's statement.
    #[error("the served log's leaf {index} is not the bundle's statement")]
    NotTheLeaf {
        /// The index.
        index: u64,
    },
}

/// Checks that `bundle` is in `log`: its checkpoint is one of the log's (same
/// root at its size) and its witnessed statement is the log's leaf at its
/// index. Signatures are the verifier's business ([`FleetVerifier`]); this is
/// the check that the client and the public saw one log.
///
/// [`FleetVerifier`]: vaultfleet_audit::FleetVerifier
pub fn bundle_in_log(bundle: &Bundle, log: &FetchedLog) -> Result<(), SplitView> {
    let note = SignedNote::parse(&bundle.checkpoint).map_err(SplitView::Checkpoint)?;
    let cp = Checkpoint::parse(&note.text).map_err(SplitView::Checkpoint)?;
    if cp.origin != log.checkpoint.origin {
        return Err(SplitView::Origin {
            got: cp.origin,
            want: log.checkpoint.origin.clone(),
        });
    }
    if cp.size > log.checkpoint.size {
        return Err(SplitView::AheadOfLog {
            bundle: cp.size,
            served: log.checkpoint.size,
        });
    }
    if log.tree.root_at(cp.size).ok() != Some(cp.root) {
        return Err(SplitView::Forked { size: cp.size });
    }
    let statement = vaultfleet_audit::Statement {
        namespace: bundle.namespace.clone(),
        timestamp: bundle.timestamp,
        epoch: bundle.epoch,
        digest: bundle.digest,
    };
    let leaf =
        leaf_bytes(&statement, &bundle.witness_key, &bundle.witness_signature).map_err(|_| {
            SplitView::NotTheLeaf {
                index: bundle.leaf_index,
            }
        })?;
    let held = log
        .entries
        .get(usize::try_from(bundle.leaf_index).unwrap_or(usize::MAX))
        .and_then(|w| leaf_bytes(&w.statement, &w.key, &w.signature).ok());
    if held.as_deref() != Some(leaf.as_slice()) {
        return Err(SplitView::NotTheLeaf {
            index: bundle.leaf_index,
        });
    }
    Ok(())
}

/// Runs `f` to completion on a small runtime of its own: for the command
/// line, which is not async.
pub fn block_on<F: Future>(f: F) -> std::io::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(f);
    // A name lookup still running on a blocking thread (a slow DNS server)
    // is not waited for (R2-6): the caller's deadline is the bound.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(out)
}
