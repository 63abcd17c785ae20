//! A running node: the replica on its sealed sled store, the network
//! transport, the vault service and its listener serving the fleet's
//! validation bundle, the metrics endpoint, and the graceful stop.
//!
//! [`RunningNode::start`] checks everything it can before it writes anything:
//! the HSM (a wrong PIN, a missing soft HSM file), the transport key, the
//! vault keys, the data directory's identity (a folder written for another
//! replica, group or fleet is refused untouched), and the evidence: its
//! bundle is verified with the audit crate's [`FleetVerifier`] pinned to the
//! `[vault]` witness and operator keys (digest, witness signature,
//! countersignature, checkpoint, inclusion proof, validity window, for this
//! replica at the wall-clock time), must fit a vault handshake, and must not
//! be older than the epoch the data directory's [`EPOCH_FILE`] says was
//! accepted (that file is not authenticated: the sealed log remains the
//! cryptographic guard). Only then does it create the data directory, keep
//! the accepted epoch, open the sealed log (bootstrapping the `[[peer]]`
//! tables the artifact lists, in its roles, into a fresh one unless the
//! replica joins a running fleet), spawn the replica and serve.
//!
//! The vault service proposes through a runtime client session over the
//! fleet: the local replica in process, the others over the network (a
//! [`RemoteClient`] proving the node's transport key, which every peer allows
//! as a service client). The session needs a leader, so it is opened by a
//! background thread that retries until it exists; the vault listener answers
//! "unavailable" until then, and the node is ready ([`RunningNode::is_ready`])
//! once it serves.
//!
//! Membership follows the witnessed fleet: the replica as network clients
//! reach it (admins included) refuses to add a learner the accepted fleet
//! artifact (in the evidence's bundle) does not list, or to promote one it
//! does not list as a voter; the `[[peer]]` tables must agree with the
//! artifact on every replica it lists (datacenter, key, learner flag), and
//! only the replicas it lists may open client sessions (as vault services):
//! an unlisted `[[peer]]` is pinned as a peer only. [`RunningNode::reload`]
//! (SIGHUP) takes a new epoch's evidence and the new pins without a restart,
//! after the same checks (never an older epoch than the accepted one).
//!
//! With `[vault] witness_log_url` the witness's log is the one it serves
//! (C2SP tlog-tiles), taken only if its checkpoint is signed by a pinned
//! witness key valid now (and cosigned as `cosigners_required` says) and it
//! extends the served checkpoint accepted before, which the data directory
//! keeps ([`SERVED_CHECKPOINT_FILE`]) with a verified copy of the log
//! ([`SERVED_LOG_FILE`]): a start while the witness is down uses the copy; a
//! signed fork is refused and both notes kept as evidence. [`serve_signals`]
//! runs a reload beside the signal loop so a stop cancels its fetch.
//!
//! [`RunningNode::stop`] (SIGTERM) stops taking vault requests, lets those in
//! flight finish (bounded), hands leadership to the most caught-up voter if
//! this replica leads, and shuts everything down, the replica's log flushed.
// A daemon waits in wall-clock time (the session retries, the bounded stop).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vaultfleet::hsm::Hsm;
use vaultfleet::replica::{ConfChangeRejection, MembershipChange};
use vaultfleet::replica::{HostHealth, Status};
use vaultfleet::runtime::{
    ClientConfig, NodeApi, ResponseSlot, RuntimeKind, Standalone, StandaloneError,
};
use vaultfleet::RequestError;
use vaultfleet::{
    Client, FleetConfig, MemberSpec, NodeHandle, Replica, ReplicaError, Sealed, SealedConfig,
};
use vaultfleet_audit::fleet::evidence::{Evidence, EvidenceError};
use vaultfleet_audit::fleet::FleetArtifact;
use vaultfleet_audit::{BundleError, FleetVerifier, MerkleTree};
use vaultfleet_net::open::{
    ChannelError, OpenServer, OpenServerConfig, OpenServerError, PAYLOAD_BYTES_MAX,
};
use vaultfleet_net::{
    ClientRole, DirectoryError, NetConfig, NetError, NetTransport, PeerDirectory, PeerEntry,
    PublicKey, RemoteClient, RemoteConfig, RemoteError, StaticSecret,
};
use vaultfleet_vault::{
    BackupVault, BundleSource, BundleSourceError, VaultEndpoint, VaultError, VaultKeys,
    VaultServer, VaultService, VaultServiceConfig, VAULT_CHANNEL_LABEL,
};

use crate::config::{Invalid, NodeConfig, Runtime, WitnessLogSource};
use crate::hsm::{HsmOpenError, NodeHsm, NodeKeyError};
use crate::metrics::{Health, MetricsError, MetricsServer, Probe};
use crate::served_log::{keep_served_log, served_log, Prior, ServedLog, TakenLog};
pub use crate::served_log::{
    CacheError, ServedLogError, FORK_EVIDENCE_PREFIX, SERVED_CHECKPOINT_FILE, SERVED_LOG_BYTES_MAX,
    SERVED_LOG_FILE, SERVED_LOG_TIMEOUT,
};

/// The file in a data directory naming whose it is.
pub const IDENTITY_FILE: &str = "vaultfleet-node.id";
/// The file in a data directory holding the highest fleet epoch this node
/// accepted: a start or a reload with older evidence is refused. It is not
/// authenticated (whoever can write the data directory can lower it); the
/// sealed log remains the cryptographic guard of the replica's state.
pub const EPOCH_FILE: &str = "accepted-epoch";
/// The most bytes read from the identity or the epoch file.
const SMALL_FILE_BYTES_MAX: u64 = 4096;
/// The sealed log's folder inside a data directory.
pub const LOG_DIR: &str = "log";
/// The file the disk health check writes and syncs.
pub const HEALTH_FILE: &str = "health-check";
/// How often the health watch checks the HSM and the disk.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How long a stop waits for vault requests in flight to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The least a stopping leader waits for leadership to move (at least two
/// election timeouts are waited).
pub const TRANSFER_WAIT_MIN: Duration = Duration::from_secs(3);
/// How long a stop waits for the thread opening the vault session to end.
const SESSION_JOIN_WAIT: Duration = Duration::from_secs(2);
/// The pause between attempts to open the vault service's session.
const SESSION_RETRY: Duration = Duration::from_millis(200);
/// The most bytes read from the evidence file or the witness log.
const INPUT_FILE_BYTES_MAX: u64 = 64 << 20;
/// How long the signal loop waits for an event before it looks at the node.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Why a node did not start. Nothing in the data directory was written
/// unless the failure came after it was opened ([`StartError::Store`] and
/// later), except the evidence files of a signed fork
/// ([`ServedLogError::Fork`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config's settings do not work together (`NodeConfig::load`
    /// refuses such a file; this is a config changed after loading).
    #[error("the node's config")]
    Config(#[source] Invalid),
    /// The HSM does not open (a wrong PIN, a missing token or file).
    #[error("the HSM")]
    Hsm(#[source] HsmOpenError),
    /// The transport key does not open.
    #[error("the transport key {}; `vaultfleet node init` writes it", path.display())]
    TransportKey {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: NodeKeyError,
    },
    /// The transport key is not the one the `[[peer]]` table of this replica
    /// pins.
    #[error("the transport key {} is not the one this replica's [[peer]] table pins: put the key `vaultfleet node init` prints in the fleet's [[peer]] tables", path.display())]
    TransportKeyMismatch {
        /// The key file.
        path: PathBuf,
    },
    /// A file the node needs cannot be read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// What it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The vault's keys do not open from the sealed OPAQUE setup.
    #[error("the vault's keys (sealed OPAQUE setup {}, under this node's HSM)", path.display())]
    VaultKeys {
        /// The sealed setup.
        path: PathBuf,
        /// The cause.
        #[source]
        source: VaultError,
    },
    /// The evidence file does not decode.
    #[error("the evidence file {}", path.display())]
    Evidence {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: EvidenceError,
    },
    /// The witness log does not parse.
    #[error("the witness log {}", path.display())]
    WitnessLog {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vaultfleet_audit::witness::LogError,
    },
    /// A witness log entry does not encode as a leaf.
    #[error("a leaf of the witness log {}", path.display())]
    WitnessLeaf {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vaultfleet::codec::EncodeError,
    },
    /// The served witness log (`[vault] witness_log_url`) could not be
    /// fetched, does not hold together, or is not signed by a pinned witness
    /// key.
    #[error("the witness log of namespace {namespace:?} served at {url}")]
    ServedLog {
        /// The URL (`[vault] witness_log_url`).
        url: String,
        /// The namespace.
        namespace: String,
        /// What went wrong (boxed: a walk's error is large).
        #[source]
        source: Box<ServedLogError>,
    },
    /// The bundle and the witness log do not go together.
    #[error("the evidence's bundle and the witness log of namespace {namespace:?}")]
    Bundle {
        /// The namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: BundleSourceError,
    },
    /// The evidence's bundle is larger than a vault handshake carries.
    #[error("the bundle in the evidence file {} is {len} bytes, a vault handshake carries at most {max}", path.display())]
    BundleTooLarge {
        /// The evidence file.
        path: PathBuf,
        /// The bundle's size.
        len: usize,
        /// The most a handshake carries.
        max: usize,
    },
    /// The evidence's bundle does not verify against the pinned witness and
    /// operator keys, is older than the accepted epoch, or its artifact and
    /// the config disagree.
    #[error("the fleet artifact in the evidence file {}", path.display())]
    Artifact {
        /// The evidence file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ArtifactMismatch,
    },
    /// The data directory is not this replica's.
    #[error("the data directory")]
    DataDir(#[source] DataDirError),
    /// The network pins do not work.
    #[error("the peer directory")]
    Directory(#[source] DirectoryError),
    /// The peer transport did not start (the address in use, say).
    #[error("the peer transport on {address}")]
    Transport {
        /// The listen address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: NetError,
    },
    /// The vault listener did not start.
    #[error("the vault listener on {address}")]
    VaultListener {
        /// The listen address.
        address: SocketAddr,
        /// The cause.
        #[source]
        source: OpenServerError,
    },
    /// The vault channel's id (from the fleet id) is refused.
    #[error("the vault channel of this fleet id")]
    Channel(#[source] ChannelError),
    /// The metrics endpoint did not start.
    #[error("the metrics endpoint")]
    Metrics(#[source] MetricsError),
    /// The sealed log does not open: tampered, rolled back, sealed for
    /// another replica, or the HSM fails.
    #[error("the sealed log in {}", path.display())]
    Store {
        /// The log's folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vaultfleet::StorageError,
    },
    /// The replica did not bootstrap or spawn.
    #[error("the replica")]
    Replica(#[source] ReplicaError),
    /// The replica could not be served on the transport.
    #[error("serving the replica on the transport")]
    Serve(#[source] NetError),
    /// The remote client did not start.
    #[error("the vault service's remote client")]
    Remote(#[source] RemoteError),
    /// A thread could not be started.
    #[error("starting a thread (the vault session's or the health watch)")]
    Thread(#[source] std::io::Error),
    /// The replica's runtime (`runtime = "pool"`: its worker pool) did not
    /// start.
    #[error("the replica's runtime")]
    Runtime(#[source] StandaloneError),
}

/// The accepted fleet artifact (inside the evidence's bundle) and the node's
/// config disagree, or the artifact cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactMismatch {
    /// The bundle does not verify for this replica now against the witness
    /// and operator keys `[vault]` pins: a changed byte, another signer, a
    /// broken inclusion proof, an artifact outside its validity window.
    #[error("the bundle does not verify against the witness and operator keys [vault] pins")]
    Unverified(#[source] BundleError),
    /// The artifact is older than the epoch this node accepted.
    #[error("the artifact is epoch {epoch}, older than epoch {accepted} this node accepted: a fleet never goes back")]
    Rollback {
        /// The artifact's epoch.
        epoch: u64,
        /// The highest epoch accepted.
        accepted: u64,
    },
    /// The artifact is of another fleet.
    #[error("the artifact is fleet {found:?}'s, this node's config says fleet {expected:?}")]
    Fleet {
        /// The artifact's fleet id.
        found: String,
        /// The config's.
        expected: String,
    },
    /// This replica is not in the artifact.
    #[error("replica {id} is not in the accepted fleet artifact (epoch {epoch}): a replaced replica does not come back; a new one needs an epoch listing it")]
    NotListed {
        /// This replica.
        id: u64,
        /// The artifact's epoch.
        epoch: u64,
    },
    /// A `[[peer]]` table disagrees with the artifact about a replica it
    /// lists.
    #[error("[[peer]] {id} pins {what} other than the accepted fleet artifact's (epoch {epoch}): fix the [[peer]] table")]
    Peer {
        /// The replica.
        id: u64,
        /// `"a datacenter"`, `"a transport key"` or `"a learner flag"`.
        what: &'static str,
        /// The artifact's epoch.
        epoch: u64,
    },
}

/// The fleet artifact inside `source`'s bundle, verified and checked against
/// `config`: every link of the bundle (the digest, the witness signature
/// under a pinned witness key, the operator's countersignature, the
/// checkpoint, the inclusion proof, the validity window) for this replica at
/// `now`; an epoch not older than `floor`; its fleet, this replica listed,
/// and every `[[peer]]` it lists pinned with its datacenter, transport key
/// and learner flag.
fn accepted_artifact(
    config: &NodeConfig,
    verifier: &FleetVerifier,
    source: &BundleSource,
    now: u64,
    floor: Option<u64>,
) -> Result<FleetArtifact, ArtifactMismatch> {
    let artifact = verifier
        .check(source.bundle(), now, config.replica_id)
        .map_err(ArtifactMismatch::Unverified)?
        .artifact;
    if let Some(accepted) = floor.filter(|&f| artifact.epoch < f) {
        return Err(ArtifactMismatch::Rollback {
            epoch: artifact.epoch,
            accepted,
        });
    }
    if artifact.fleet_id != config.fleet_id {
        return Err(ArtifactMismatch::Fleet {
            found: artifact.fleet_id,
            expected: config.fleet_id.clone(),
        });
    }
    if !artifact.replicas.iter().any(|r| r.id == config.replica_id) {
        return Err(ArtifactMismatch::NotListed {
            id: config.replica_id,
            epoch: artifact.epoch,
        });
    }
    for p in &config.peers {
        let Some(listed) = artifact.replicas.iter().find(|r| r.id == p.id) else {
            continue;
        };
        let mismatch = |what| ArtifactMismatch::Peer {
            id: p.id,
            what,
            epoch: artifact.epoch,
        };
        if listed.datacenter != p.datacenter {
            return Err(mismatch("a datacenter"));
        }
        let key = crate::hsm::parse_public_key(&p.transport_key).ok();
        if key.map(|k| *k.as_bytes()) != Some(listed.transport_key) {
            return Err(mismatch("a transport key"));
        }
        if (p.learner && artifact.voters.contains(&p.id))
            || (!p.learner && artifact.learners.contains(&p.id))
        {
            return Err(mismatch("a learner flag"));
        }
    }
    Ok(artifact)
}

/// The membership a fresh data directory is bootstrapped with: the
/// `[[peer]]` tables the accepted artifact lists as voters or learners, in
/// the artifact's role (an unlisted `[[peer]]` is never a member).
fn bootstrap_membership(config: &NodeConfig, artifact: &FleetArtifact) -> FleetConfig {
    FleetConfig::new(
        config
            .peers
            .iter()
            .filter_map(|p| {
                if artifact.voters.contains(&p.id) {
                    Some(MemberSpec::voter(p.id, p.datacenter.clone()))
                } else if artifact.learners.contains(&p.id) {
                    Some(MemberSpec::learner(p.id, p.datacenter.clone()))
                } else {
                    None
                }
            })
            .collect(),
    )
}

/// Now, in Unix seconds (what the bundle's validity is checked at).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A data directory that is not this replica's, or cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Others may write it: they could plant files the node trusts (the epoch
    /// floor). Group access is allowed (a volume's group, as Kubernetes'
    /// `fsGroup` gives it).
    #[error("{} is writable by others (mode {mode:o}): chmod o-w it", path.display())]
    Writable {
        /// The folder.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// It was written for another replica, group or fleet.
    #[error("{} belongs to {found}, not to {expected}: point data_dir at this replica's own folder (a replica that lost its folder is replaced under a new id, docs/operations.md)", path.display())]
    Foreign {
        /// The folder.
        path: PathBuf,
        /// Whose it says it is.
        found: String,
        /// Whose it should be.
        expected: String,
    },
    /// It holds files but no identity file: not a node's data directory.
    #[error("{} is not empty and has no {IDENTITY_FILE}: it is not a vaultfleet node's data directory; give an empty or new folder", path.display())]
    NotADataDir {
        /// The folder.
        path: PathBuf,
    },
    /// Its epoch file ([`EPOCH_FILE`]) does not say an epoch.
    #[error("{} does not hold an epoch: restore it or remove it (a node then accepts any verified epoch once)", path.display())]
    Epoch {
        /// The file.
        path: PathBuf,
    },
    /// A served log taken does not extend the accepted served checkpoint
    /// the data directory holds now (another writer moved it on), or that
    /// checkpoint cannot be read: the served log is not kept.
    #[error(
        "the served log taken does not extend the accepted served checkpoint in the data directory"
    )]
    ServedLog(#[source] Box<ServedLogError>),
    /// It or its identity file cannot be read or written.
    #[error("{}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Why a reload was refused. Nothing was changed, except after a
/// [`ReloadError::Transport`], [`ReloadError::Remote`] or
/// [`ReloadError::Payload`], where the steps before it took effect (and the
/// epoch file already holds the new epoch), and after a
/// [`ReloadError::ServedLogFile`], where everything took effect but the
/// served log's record in the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new config's settings do not work together.
    #[error("the new config")]
    Config(#[source] Invalid),
    /// A setting only a restart changes was changed.
    #[error("{field} changed: restart the node to change it (the reload takes [[peer]], [[admin_key]], the evidence, the witness log and the witness and operator keys)")]
    Fixed {
        /// The setting.
        field: &'static str,
    },
    /// The new files do not go together (what a start would refuse).
    #[error("the new files")]
    Start(#[source] StartError),
    /// The new accepted epoch could not be written to the data directory.
    #[error("the accepted epoch could not be kept")]
    EpochFile(#[source] DataDirError),
    /// The served log taken could not be kept in the data directory
    /// ([`SERVED_CHECKPOINT_FILE`], [`SERVED_LOG_FILE`]). It is in use
    /// (everything else took effect); the next reload checks against both
    /// it and the checkpoint on disk.
    #[error("the served log taken could not be kept")]
    ServedLogFile(#[source] DataDirError),
    /// The transport refused the new pins.
    #[error("the transport refused the new pins")]
    Transport(#[source] NetError),
    /// The remote client refused the new pins.
    #[error("the vault service's remote client refused the new pins")]
    Remote(#[source] RemoteError),
    /// The vault listener refused the new bundle.
    #[error("the vault listener refused the new bundle")]
    Payload(#[source] ChannelError),
}

/// Why a stop was not clean. The node stopped anyway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// The replica did not shut down cleanly (its last writes may not be
    /// flushed; nothing acknowledged is lost, its log is synced before every
    /// acknowledgement).
    #[error("the replica did not shut down cleanly")]
    Replica(#[source] ReplicaError),
}

/// The identity line of replica `replica` of `group` in `fleet_id`.
fn identity(fleet_id: &str, group: u64, replica: u64) -> String {
    format!(
        "vaultfleet node data v1 fleet={} group={group} replica={replica}\n",
        crate::hsm::hex(fleet_id.as_bytes())
    )
}

/// What the data directory is, read without writing anything.
enum DataDirState {
    /// Absent or empty: a first start.
    Fresh,
    /// This replica's.
    Ours,
}

fn check_data_dir(path: &Path, expected: &str) -> Result<DataDirState, DataDirError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| DataDirError::Io { path: p, source }
    };
    let mut entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataDirState::Fresh),
        Err(e) => return Err(io(path)(e)),
    };
    if entries.next().is_none() {
        return Ok(DataDirState::Fresh);
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o002 != 0 {
            return Err(DataDirError::Writable {
                path: path.to_path_buf(),
                mode,
            });
        }
    }

    let id_path = path.join(IDENTITY_FILE);
    let found = match read_small(&id_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataDirError::NotADataDir {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io(&id_path)(e)),
    };
    if found == expected.as_bytes() {
        return Ok(DataDirState::Ours);
    }
    Err(DataDirError::Foreign {
        path: path.to_path_buf(),
        found: describe_identity(&found),
        expected: describe_identity(expected.as_bytes()),
    })
}

/// "replica R of group G in fleet F" from an identity line, or what it is.
fn describe_identity(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    let fleet = field("fleet").and_then(|h| {
        let bytes: Option<Vec<u8>> = (0..h.len() / 2)
            .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        String::from_utf8(bytes?).ok()
    });
    match (fleet, field("group"), field("replica")) {
        (Some(f), Some(g), Some(r)) => format!("replica {r} of group {g} in fleet {f:?}"),
        _ => "an unreadable identity file".into(),
    }
}

/// Creates the data directory and its identity file (synced).
fn claim_data_dir(path: &Path, identity: &str) -> Result<(), DataDirError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| DataDirError::Io { path: p, source }
    };
    std::fs::create_dir_all(path).map_err(io(path))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(path))?;
    }
    let id_path = path.join(IDENTITY_FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&id_path)
        .map_err(io(&id_path))?;
    f.write_all(identity.as_bytes()).map_err(io(&id_path))?;
    f.sync_all().map_err(io(&id_path))?;
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

/// A small file (the identity, the epoch), at most [`SMALL_FILE_BYTES_MAX`]
/// bytes ([`crate::files::read_capped`]).
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    crate::files::read_capped(path, SMALL_FILE_BYTES_MAX)
}

/// The epoch line of the epoch file.
fn epoch_line(epoch: u64) -> String {
    format!("vaultfleet accepted epoch {epoch}\n")
}

/// The highest epoch accepted on this data directory, if it says one.
fn read_epoch(data_dir: &Path) -> Result<Option<u64>, DataDirError> {
    let path = data_dir.join(EPOCH_FILE);
    let bytes = match read_small(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DataDirError::Io { path, source }),
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| t.strip_prefix("vaultfleet accepted epoch "))
        .and_then(|t| t.strip_suffix('\n'))
        .and_then(|t| t.parse::<u64>().ok())
        .map(Some)
        .ok_or(DataDirError::Epoch { path })
}

/// Keeps `epoch` as the highest accepted: written to a temporary file,
/// synced, renamed over the epoch file, the folder synced.
fn write_epoch(data_dir: &Path, epoch: u64) -> Result<(), DataDirError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| DataDirError::Io { path: p, source }
    };
    let path = data_dir.join(EPOCH_FILE);
    crate::files::write_replacing(&path, epoch_line(epoch).as_bytes()).map_err(io(&path))
}

/// An input file (the evidence, the witness log, the sealed setup), at most
/// [`INPUT_FILE_BYTES_MAX`] bytes ([`crate::files::read_capped`]).
fn read_bounded(what: &'static str, path: &Path) -> Result<Vec<u8>, StartError> {
    crate::files::read_capped(path, INPUT_FILE_BYTES_MAX).map_err(|source| StartError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The bundle of the evidence file and the witness log's tree of
/// `namespace`, from the witness's log file or the served log; with the
/// served log taken, if it is one (and whether it was fetched now, or
/// started from the data directory's cache).
fn bundle_source(
    config: &NodeConfig,
    prior: &Prior,
    cancel: &AtomicBool,
) -> Result<(BundleSource, Option<TakenLog>), StartError> {
    let v = &config.vault;
    let evidence =
        Evidence::decode(&read_bounded("the evidence file", &v.evidence)?).map_err(|source| {
            StartError::Evidence {
                path: v.evidence.clone(),
                source,
            }
        })?;
    // Checked here, before anything changes: the vault listener refuses a
    // larger handshake payload (a reload would otherwise half-apply).
    if evidence.bundle.len() > PAYLOAD_BYTES_MAX {
        return Err(StartError::BundleTooLarge {
            path: v.evidence.clone(),
            len: evidence.bundle.len(),
            max: PAYLOAD_BYTES_MAX,
        });
    }
    let (tree, taken) = match config.witness_log_source().map_err(StartError::Config)? {
        WitnessLogSource::File(path) => (log_file_tree(&path, &v.namespace)?, None),
        WitnessLogSource::Url { url, base } => {
            let taken = served_log(config, &base, prior, cancel, unix_now()).map_err(|source| {
                StartError::ServedLog {
                    url,
                    namespace: v.namespace.clone(),
                    source: Box::new(source),
                }
            })?;
            (taken.log.tree.clone(), Some(taken))
        }
    };
    let source = BundleSource::new(evidence.bundle, tree).map_err(|source| StartError::Bundle {
        namespace: v.namespace.clone(),
        source,
    })?;
    Ok((source, taken))
}

/// The tree of `namespace` rebuilt from the witness's log file.
fn log_file_tree(path: &Path, namespace: &str) -> Result<MerkleTree, StartError> {
    let log = read_bounded("the witness log", path)?;
    let text = String::from_utf8_lossy(&log);
    let entries =
        vaultfleet_audit::witness::parse_log(&text).map_err(|source| StartError::WitnessLog {
            path: path.to_path_buf(),
            source,
        })?;
    let mut tree = MerkleTree::new();
    for e in entries
        .iter()
        .filter(|e| e.statement.namespace == namespace)
    {
        let leaf = vaultfleet_audit::witness::leaf_bytes(&e.statement, &e.key, &e.signature)
            .map_err(|source| StartError::WitnessLeaf {
                path: path.to_path_buf(),
                source,
            })?;
        tree.append(&leaf);
    }
    Ok(tree)
}

/// The vault listener's gate: closed until the service exists, closed again
/// when the node stops; counts the requests in flight.
struct Gate {
    service: OnceLock<Arc<VaultService<NodeHsm>>>,
    /// The bundle served (replaced by a reload); the service takes it when
    /// it is created.
    source: parking_lot::Mutex<BundleSource>,
    accepting: AtomicBool,
    /// False while the HSM or the disk does not answer (the health watch).
    healthy: AtomicBool,
    /// The health watch's latest results, for the status the node's clients
    /// (admins included) read; unknown until its first check.
    host: parking_lot::Mutex<HostHealth>,
    in_flight: AtomicUsize,
}

/// Decrements the in-flight count when a request is done.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    fn handle(&self, request: &[u8]) -> Option<Vec<u8>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _done = InFlight(&self.in_flight);
        if !self.accepting.load(Ordering::SeqCst) || !self.healthy.load(Ordering::SeqCst) {
            return None;
        }
        // Without a service yet (no session), the client hears `unavailable`.
        self.service.get()?.call(request).ok()
    }

    fn serving(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
            && self.healthy.load(Ordering::SeqCst)
            && self.service.get().is_some()
    }
}

/// Checks the HSM and the disk every [`HEALTH_EVERY`] until the node stops;
/// while either fails the vault listener answers "unavailable" (clients go to
/// another replica) and the node is not ready.
fn watch_health(probe: &NodeProbe) {
    let mut was_healthy = true;
    while !probe.stopped.load(Ordering::SeqCst) {
        let hsm = probe.hsm_health();
        let disk = probe.disk_health();
        *probe.last.lock() = Some((hsm.clone(), disk.clone()));
        let healthy = hsm.is_ok() && disk.is_ok();
        *probe.gate.host.lock() = HostHealth {
            hsm: Some(hsm.is_ok()),
            disk: Some(disk.is_ok()),
        };
        if healthy != was_healthy {
            if healthy {
                tracing::info!("the HSM and the disk answer again: serving");
            } else {
                tracing::warn!(
                    hsm = hsm.err().as_deref().unwrap_or("ok"),
                    disk = disk.err().as_deref().unwrap_or("ok"),
                    "the HSM or the disk does not answer: not serving vault requests"
                );
            }
            was_healthy = healthy;
        }
        probe.gate.healthy.store(healthy, Ordering::SeqCst);
        let next = Instant::now() + HEALTH_EVERY;
        while Instant::now() < next && !probe.stopped.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What the metrics endpoint asks of a running node.
pub struct NodeProbe {
    handle: NodeHandle,
    hsm: NodeHsm,
    data_dir: PathBuf,
    gate: Arc<Gate>,
    stopped: AtomicBool,
    /// The health watch's last HSM and disk results (with their reasons),
    /// which the metrics endpoint reports rather than checking again.
    last: parking_lot::Mutex<Option<HostChecks>>,
}

/// One health check's HSM and disk results, each with its reason.
type HostChecks = (Result<(), String>, Result<(), String>);

impl std::fmt::Debug for NodeProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProbe")
            .field("replica", &self.handle.id())
            .finish_non_exhaustive()
    }
}

impl NodeProbe {
    /// The HSM answers a cheap call (16 random bytes).
    pub fn hsm_health(&self) -> Result<(), String> {
        let mut probe = [0u8; 16];
        self.hsm.random(&mut probe).map_err(|e| e.to_string())
    }

    /// The data directory takes a small write and its sync.
    pub fn disk_health(&self) -> Result<(), String> {
        let path = self.data_dir.join(HEALTH_FILE);
        crate::files::write_replacing(&path, b"vaultfleet disk health check\n")
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl Probe for NodeProbe {
    fn status(&self) -> Option<Status> {
        if self.stopped.load(Ordering::SeqCst) || self.handle.is_stopped() {
            return None;
        }
        Some(self.handle.status())
    }

    fn health(&self) -> Health {
        // The watch checks every second; only before its first check does
        // the endpoint check for itself.
        let last = self.last.lock().clone();
        let (hsm, disk) = last.unwrap_or_else(|| (self.hsm_health(), self.disk_health()));
        Health {
            hsm,
            disk,
            serving: self.gate.serving(),
        }
    }
}

/// A running node (see the module's documentation).
pub struct RunningNode {
    replica: u64,
    group: u64,
    /// The config it started with (a reload may change only some of it).
    config: NodeConfig,
    secret: StaticSecret,
    /// The fleet artifact of the bundle served: what membership changes
    /// follow.
    accepted: Arc<parking_lot::RwLock<FleetArtifact>>,
    transport: NetTransport,
    /// `None` once stopped (by [`RunningNode::stop`] or on drop).
    node: Option<Standalone>,
    handle: NodeHandle,
    remote: RemoteClient,
    vault_server: OpenServer,
    gate: Arc<Gate>,
    stop_session: Arc<AtomicBool>,
    session_thread: Option<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
    probe: Arc<NodeProbe>,
    transfer_wait: Duration,
    /// The served log in use (`[vault] witness_log_url`): what a reload's
    /// must extend.
    served: parking_lot::Mutex<Option<ServedLog>>,
    /// Set once the node is stopping: a reload's fetch in progress is
    /// abandoned ([`RunningNode::cancel_fetches`]).
    cancel_fetch: AtomicBool,
    /// Held for the whole of a reload: one at a time.
    reloading: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("replica", &self.replica)
            .field("peer", &self.peer_addr())
            .field("vault", &self.vault_addr())
            .field("metrics", &self.metrics_addr())
            .finish_non_exhaustive()
    }
}

/// Starts the replica on `log` with a fresh vault state machine, on the
/// runtime the config's `runtime` picks.
fn spawn_replica<L: vaultfleet::LogStore>(
    config: &NodeConfig,
    log: L,
    transport: Arc<dyn vaultfleet::Transport>,
) -> Result<Standalone, StartError> {
    let kind = match config.runtime {
        Runtime::Threads => RuntimeKind::Threads,
        // `Runtime` may grow; the pool is the default.
        _ => RuntimeKind::Pool,
    };
    Standalone::spawn(
        kind,
        config.node_config(),
        log,
        BackupVault::new(),
        transport,
    )
    .map_err(|e| match e {
        StandaloneError::Replica(e) => StartError::Replica(e),
        e => StartError::Runtime(e),
    })
}

/// What [`RunningNode::start`] builds once the listeners are up.
struct Serving {
    node: Standalone,
    handle: NodeHandle,
    remote: RemoteClient,
    metrics: Option<MetricsServer>,
    probe: Arc<NodeProbe>,
    stop_session: Arc<AtomicBool>,
    session_thread: JoinHandle<()>,
    served: Option<ServedLog>,
}

/// What [`RunningNode::start`] reads and checks before it writes anything.
struct Checked {
    artifact: FleetArtifact,
    /// The membership a fresh data directory is bootstrapped with.
    bootstrap: FleetConfig,
    /// The highest epoch the data directory says was accepted.
    floor: Option<u64>,
    hsm: NodeHsm,
    secret: StaticSecret,
    keys: VaultKeys<NodeHsm>,
    source: BundleSource,
    /// The served log taken (`[vault] witness_log_url`).
    served: Option<TakenLog>,
    identity: String,
    state: DataDirState,
    directory: PeerDirectory,
    client_directory: PeerDirectory,
}

/// The node's transport settings: the net crate's defaults, except that one
/// client key gets a small share (a quarter, in requests and in bytes) of the
/// process's client budget. Every client
/// of a node is another node's vault service (one or two connections) or an
/// operator: with the defaults, one key's 16 connections × 256 requests could
/// hold all 4096 requests the process admits and starve every other node's
/// service (from the attacker review of the daemon).
fn net_config(config: &NodeConfig) -> NetConfig {
    let mut net = NetConfig::new(config.listen.peer);
    net.connections_per_client_key_max = 4;
    net.client_in_flight_max = 256;
    net.client_bytes_in_flight_max = 4 << 20;
    debug_assert!(
        net.connections_per_client_key_max * net.client_in_flight_max
            <= net.client_in_flight_total_max / 4
            && net.connections_per_client_key_max * net.client_bytes_in_flight_max
                <= net.client_bytes_in_flight_total_max / 4
    );
    net
}

impl RunningNode {
    /// Starts the node `config` describes (see the module's documentation for
    /// the order of checks). Returns once the replica runs and every listener
    /// is up; the vault serves once a session with the fleet exists
    /// ([`is_ready`](Self::is_ready)).
    pub fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
        let checked = check(&config)?;
        let transport = NetTransport::start(checked.directory.clone(), net_config(&config))
            .map_err(|source| StartError::Transport {
                address: config.listen.peer,
                source,
            })?;
        let gate = Arc::new(Gate {
            service: OnceLock::new(),
            source: parking_lot::Mutex::new(checked.source.clone()),
            accepting: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            host: parking_lot::Mutex::new(HostHealth::UNKNOWN),
            in_flight: AtomicUsize::new(0),
        });
        let vault_server = match vault_listener(&config, &checked, &gate) {
            Ok(s) => s,
            Err(e) => {
                transport.shutdown();
                return Err(e);
            }
        };
        let accepted = Arc::new(parking_lot::RwLock::new(checked.artifact.clone()));
        let secret = checked.secret.clone();
        let serving = match serve(&config, checked, &transport, &gate, &accepted) {
            Ok(s) => s,
            Err(e) => {
                vault_server.shutdown();
                transport.shutdown();
                return Err(e);
            }
        };
        tracing::info!(
            replica = config.replica_id,
            peer = %transport.local_addr(),
            vault = %vault_server.local_addr(),
            "node started"
        );
        let transfer_wait = (config.timing.election_timeout() * 4).max(TRANSFER_WAIT_MIN);
        Ok(RunningNode {
            replica: config.replica_id,
            group: config.group,
            secret,
            accepted,
            transport,
            node: Some(serving.node),
            handle: serving.handle,
            remote: serving.remote,
            vault_server,
            gate,
            stop_session: serving.stop_session,
            session_thread: Some(serving.session_thread),
            metrics: serving.metrics,
            probe: serving.probe,
            transfer_wait,
            served: parking_lot::Mutex::new(serving.served),
            cancel_fetch: AtomicBool::new(false),
            reloading: parking_lot::Mutex::new(()),
            config,
        })
    }

    /// The peer/client listener's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The vault listener's address.
    pub fn vault_addr(&self) -> SocketAddr {
        self.vault_server.local_addr()
    }

    /// The metrics endpoint's address, if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// This node's replica id.
    pub fn replica(&self) -> u64 {
        self.replica
    }

    /// The replica's status, with the host's health as the health watch
    /// last found it (as the node's clients read it).
    pub fn status(&self) -> Status {
        let mut status = self.handle.status();
        status.host = *self.gate.host.lock();
        status
    }

    /// The replica's handle (for in-process callers and tests).
    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// What the metrics endpoint asks of this node.
    pub fn probe(&self) -> Arc<NodeProbe> {
        Arc::clone(&self.probe)
    }

    /// True once the vault service serves (its session with the fleet
    /// exists).
    pub fn is_ready(&self) -> bool {
        self.gate.serving()
    }

    /// Waits until the node is ready, at most `timeout`; returns whether it is.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// Takes a changed config (SIGHUP): the `[[peer]]` and `[[admin_key]]`
    /// tables (the transport's pins and allowed clients, the remote client's
    /// pins), the evidence and the witness log (the bundle served in every
    /// handshake and reply from now on, and the accepted fleet artifact
    /// membership changes follow), the pinned witness and operator keys.
    /// Everything else must be unchanged (it takes a restart). The new
    /// bundle is verified as at a start and must not be older than the
    /// accepted epoch; a newer epoch is kept in the data directory before
    /// anything is swapped. On an error nothing changed. Returns the
    /// accepted artifact's epoch.
    ///
    /// The vault service's own session keeps the replicas it started with:
    /// a replica added later is reached by it after the next restart.
    pub fn reload(&self, config: NodeConfig) -> Result<u64, ReloadError> {
        // One reload at a time, from its first read to its last write: two
        // would each check against the same served log and the older could
        // be kept last.
        let _one = self.reloading.lock();
        config.validate().map_err(ReloadError::Config)?;
        let old = &self.config;
        let fixed: [(&'static str, bool); 14] = [
            ("fleet_id", config.fleet_id == old.fleet_id),
            ("group", config.group == old.group),
            ("replica_id", config.replica_id == old.replica_id),
            ("datacenter", config.datacenter == old.datacenter),
            ("data_dir", config.data_dir == old.data_dir),
            ("listen", config.listen == old.listen),
            ("hsm", config.hsm == old.hsm),
            ("transport_key", config.transport_key == old.transport_key),
            (
                "vault.opaque_setup",
                config.vault.opaque_setup == old.vault.opaque_setup,
            ),
            ("timing", config.timing == old.timing),
            ("log", config.log == old.log),
            ("join", config.join == old.join),
            ("runtime", config.runtime == old.runtime),
            (
                "streamed_snapshots",
                config.streamed_snapshots == old.streamed_snapshots,
            ),
        ];
        if let Some((field, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(ReloadError::Fixed { field });
        }
        let own = config
            .peers
            .iter()
            .find(|p| p.id == self.replica)
            .and_then(|p| crate::hsm::parse_public_key(&p.transport_key).ok());
        if own != Some(self.secret.public_key()) {
            return Err(ReloadError::Start(StartError::TransportKeyMismatch {
                path: config.transport_key.clone(),
            }));
        }
        let verifier = config.fleet_verifier().map_err(ReloadError::Config)?;
        let prior = Prior::Reload {
            data_dir: config.data_dir.clone(),
            current: self.served.lock().clone(),
        };
        let (source, served) =
            bundle_source(&config, &prior, &self.cancel_fetch).map_err(ReloadError::Start)?;
        drop(prior);
        // The floor is the higher of the epoch in use and the one kept on
        // disk: a reload that kept a new epoch and then failed to swap must
        // not let an older one through next time.
        let current = self.accepted.read().epoch;
        let kept = read_epoch(&config.data_dir)
            .map_err(ReloadError::EpochFile)?
            .unwrap_or(0);
        let floor = current.max(kept);
        let artifact = accepted_artifact(&config, &verifier, &source, unix_now(), Some(floor))
            .map_err(|source| {
                ReloadError::Start(StartError::Artifact {
                    path: config.vault.evidence.clone(),
                    source,
                })
            })?;
        let (directory, client_directory) =
            directories(&config, &self.secret, &artifact).map_err(ReloadError::Start)?;
        // Checked: now change, each step on its own; the new epoch is kept
        // first, so a restart never goes back to an older one.
        if artifact.epoch > kept {
            write_epoch(&config.data_dir, artifact.epoch).map_err(ReloadError::EpochFile)?;
        }
        self.transport
            .update_directory(directory)
            .map_err(ReloadError::Transport)?;
        self.remote
            .update_directory(client_directory)
            .map_err(ReloadError::Remote)?;
        self.vault_server
            .set_payload(source.bundle().to_vec())
            .map_err(ReloadError::Payload)?;
        {
            let mut current = self.gate.source.lock();
            if let Some(service) = self.gate.service.get() {
                service.serve(source.clone());
            }
            *current = source;
        }
        let epoch = artifact.epoch;
        *self.accepted.write() = artifact;
        // The served log is kept only once it is the one in use: kept first,
        // a failed swap would leave the disk ahead of the memory.
        if let Some(taken) = served {
            let kept = keep_served_log(&config.data_dir, &config.vault.namespace, &taken.log);
            *self.served.lock() = Some(taken.log);
            kept.map_err(ReloadError::ServedLogFile)?;
        }
        tracing::info!(
            replica = self.replica,
            epoch,
            peers = config.peers.len(),
            admin_keys = config.admin_keys.len(),
            "reloaded the config, the evidence and the witness log"
        );
        Ok(epoch)
    }

    /// The epoch of the accepted fleet artifact (the bundle served).
    pub fn accepted_epoch(&self) -> u64 {
        self.accepted.read().epoch
    }

    /// The size of the served witness log in use (`[vault]
    /// witness_log_url`), if the node follows one.
    pub fn served_log_size(&self) -> Option<u64> {
        self.served.lock().as_ref().map(|l| l.checkpoint.size)
    }

    /// Abandons a reload's fetch of the served log in progress, and every
    /// later one (the reload fails with [`ServedLogError::Cancelled`]): for a
    /// node about to stop, so a slow or silent witness never holds up the
    /// stop.
    pub fn cancel_fetches(&self) {
        self.cancel_fetch.store(true, Ordering::SeqCst);
    }

    /// Stops gracefully: stops taking vault requests, lets the ones in flight
    /// finish or fail (at most [`DRAIN_TIMEOUT`]), hands leadership to the
    /// most caught-up voter if this replica leads and waits (bounded) until it
    /// moved, then shuts down the listeners, the remote client, the replica
    /// (flushing its log) and the transport.
    pub fn stop(mut self) -> Result<(), StopError> {
        tracing::info!(replica = self.replica, "stopping");
        self.gate.accepting.store(false, Ordering::SeqCst);
        self.stop_session.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.gate.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.gate.in_flight.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "vault requests still in flight at the stop; their clients retry elsewhere"
            );
        }
        if let Some(service) = self.gate.service.get() {
            service.stop();
        }
        self.hand_over_leadership();
        self.probe.stopped.store(true, Ordering::SeqCst);
        if let Some(m) = self.metrics.take() {
            m.shutdown();
        }
        self.vault_server.shutdown();
        self.remote.shutdown();
        if let Some(t) = self.session_thread.take() {
            // It sees the stop between attempts; an attempt in progress fails
            // fast once the remote client and the replica are shut down, so
            // it is left to end by itself if it does not end soon.
            let deadline = Instant::now() + SESSION_JOIN_WAIT;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() && t.join().is_err() {
                tracing::warn!("the vault session thread panicked");
            }
        }
        self.transport
            .stop_serving_clients(self.group, self.replica);
        let result = match self.node.take() {
            Some(node) => node.shutdown().map_err(StopError::Replica),
            None => Ok(()),
        };
        self.transport.shutdown();
        tracing::info!(replica = self.replica, "stopped");
        result
    }

    /// Shuts everything down at once (no drain, no hand-over): what a drop
    /// without [`stop`](Self::stop) does.
    fn shut_down_now(&mut self) {
        let Some(node) = self.node.take() else {
            return;
        };
        self.gate.accepting.store(false, Ordering::SeqCst);
        self.stop_session.store(true, Ordering::SeqCst);
        self.probe.stopped.store(true, Ordering::SeqCst);
        if let Some(m) = self.metrics.take() {
            m.shutdown();
        }
        self.vault_server.shutdown();
        self.remote.shutdown();
        self.transport
            .stop_serving_clients(self.group, self.replica);
        if let Err(e) = node.shutdown() {
            tracing::warn!(replica = self.replica, error = %e, "the replica did not shut down cleanly");
        }
        self.transport.shutdown();
    }

    /// If this replica leads: transfers leadership to the recently active
    /// voter with the highest matched index and waits (bounded) until this
    /// replica no longer leads.
    fn hand_over_leadership(&self) {
        let status = self.handle.status();
        if status.leader != Some(self.replica) {
            return;
        }
        let Some(to) = status
            .followers
            .iter()
            .filter(|f| f.id != self.replica && f.recent_active && status.voters.contains(&f.id))
            .max_by_key(|f| (f.matched, std::cmp::Reverse(f.id)))
            .map(|f| f.id)
        else {
            return;
        };
        if let Err(e) = self.handle.transfer_leader(to) {
            tracing::warn!(to, error = %e, "leadership transfer refused; stopping as leader");
            return;
        }
        let deadline = Instant::now() + self.transfer_wait;
        while Instant::now() < deadline {
            // Moved, or at least no longer ours (stepped down without a quorum).
            let leader = self.handle.status().leader;
            match leader {
                Some(l) if l == self.replica => {}
                Some(l) => {
                    tracing::info!(to = l, "leadership handed over");
                    return;
                }
                None => {
                    tracing::info!("no longer leader (stepped down without a quorum)");
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(to, "leadership did not move in time; stopping as leader");
    }
}

impl Drop for RunningNode {
    /// A node dropped without [`RunningNode::stop`] (a panicking test, say)
    /// still closes its listeners and shuts its replica down.
    fn drop(&mut self) {
        self.shut_down_now();
    }
}

/// The node's peer directory (every peer pinned; the peers the accepted
/// artifact lists also allowed as service clients, an unlisted one, such as
/// a member being removed, only pinned as a peer; the admin keys as admins)
/// and its remote client's directory (the other replicas pinned).
fn directories(
    config: &NodeConfig,
    secret: &StaticSecret,
    artifact: &FleetArtifact,
) -> Result<(PeerDirectory, PeerDirectory), StartError> {
    let mut directory =
        PeerDirectory::new(config.fleet_id.clone(), [config.replica_id], secret.clone())
            .map_err(StartError::Directory)?;
    let mut client = PeerDirectory::client(config.fleet_id.clone(), secret.clone())
        .map_err(StartError::Directory)?;
    for p in &config.peers {
        let public_key = crate::hsm::parse_public_key(&p.transport_key).map_err(|source| {
            StartError::Config(Invalid::Key {
                owner: format!("[[peer]] {}", p.id),
                source,
            })
        })?;
        let entry = PeerEntry {
            address: p.address,
            datacenter: p.datacenter.clone(),
            public_key,
        };
        directory
            .insert(p.id, entry.clone())
            .map_err(StartError::Directory)?;
        if p.id != config.replica_id {
            // Its key equals the artifact's (checked before): only a replica
            // of the witnessed fleet proposes as a vault service.
            if artifact.replica(p.id).is_some() {
                directory
                    .allow_client(public_key)
                    .map_err(StartError::Directory)?;
            }
            client.insert(p.id, entry).map_err(StartError::Directory)?;
        }
    }
    for a in &config.admin_keys {
        let key = crate::hsm::parse_public_key(&a.public_key).map_err(|source| {
            StartError::Config(Invalid::Key {
                owner: format!("[[admin_key]] {:?}", a.name),
                source,
            })
        })?;
        directory
            .allow_client_as(key, ClientRole::Admin)
            .map_err(StartError::Directory)?;
    }
    Ok((directory, client))
}

/// The fleet as the vault service's session reaches it: this replica in
/// process, the others over the network, by ascending id.
fn session_nodes(
    config: &NodeConfig,
    handle: &NodeHandle,
    remote: &RemoteClient,
    owner: PublicKey,
) -> Result<Vec<Arc<dyn NodeApi>>, RemoteError> {
    let mut ids: Vec<u64> = config.peers.iter().map(|p| p.id).collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|id| {
            if id == config.replica_id {
                Ok(Arc::new(OwnedLocal {
                    handle: handle.clone(),
                    owner: vaultfleet::bytes::Bytes::copy_from_slice(owner.as_bytes()),
                }) as Arc<dyn NodeApi>)
            } else {
                remote.node(config.group, id).map(|n| n as Arc<dyn NodeApi>)
            }
        })
        .collect()
}

/// This replica as the network's clients reach it (other nodes' vault
/// services, admins): everything passes through, except a membership change
/// that the accepted fleet artifact does not allow. Membership follows the
/// witnessed fleet: a replica joins as a learner only if the artifact lists
/// its id and datacenter (its transport key is the one every node pins for
/// it, checked against the artifact at start and reload), and is promoted
/// only if the artifact lists it as a voter. Removals are always allowed.
struct Guarded {
    handle: NodeHandle,
    accepted: Arc<parking_lot::RwLock<FleetArtifact>>,
    /// Holds the health watch's latest results, reported in `status`.
    gate: Arc<Gate>,
}

impl Guarded {
    /// `Ok` if the accepted artifact allows `change`.
    fn allows(&self, change: &MembershipChange) -> Result<(), RequestError> {
        let artifact = self.accepted.read();
        membership_allowed(&artifact, change).map_err(|why| {
            tracing::warn!(
                replica = self.handle.id(),
                epoch = artifact.epoch,
                ?change,
                "membership change refused: {why}"
            );
            RequestError::ConfChangeRejected(ConfChangeRejection::NotInAcceptedFleet {
                epoch: artifact.epoch,
                reason: why.to_owned(),
            })
        })
    }
}

/// Whether `artifact` allows `change`, and why not.
fn membership_allowed(
    artifact: &FleetArtifact,
    change: &MembershipChange,
) -> Result<(), &'static str> {
    match change {
        MembershipChange::AddLearner { id, datacenter } => {
            match artifact.replicas.iter().find(|r| r.id == *id) {
                Some(r) if r.datacenter == *datacenter => Ok(()),
                Some(_) => Err("the accepted fleet artifact lists it in another datacenter"),
                None => Err("the accepted fleet artifact does not list it"),
            }
        }
        MembershipChange::Promote { id } if !artifact.voters.contains(id) => {
            Err("the accepted fleet artifact does not list it as a voter")
        }
        _ => Ok(()),
    }
}

impl NodeApi for Guarded {
    fn id(&self) -> vaultfleet::ReplicaId {
        self.handle.id()
    }
    /// The replica's status with the host's health as the health watch last
    /// found it.
    fn status(&self) -> Status {
        let mut status = self.handle.status();
        status.host = *self.gate.host.lock();
        status
    }
    fn is_stopped(&self) -> bool {
        self.handle.is_stopped()
    }
    fn propose_into(
        &self,
        request: vaultfleet::wire::Request,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.handle.propose_into(request, slot)
    }
    fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.handle.register_session_into(slot)
    }
    fn register_session_of_into(
        &self,
        owner: Vec<u8>,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.handle.register_session_of_into(owner, slot)
    }
    fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError> {
        self.handle.read_into(query, slot)
    }
    fn change_membership_into(
        &self,
        change: MembershipChange,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.allows(&change)?;
        self.handle.change_membership_into(change, slot)
    }
    fn mark_state_digest_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.handle.mark_state_digest_into(slot)
    }
    fn command_bytes_max(&self) -> Option<usize> {
        Some(self.handle.command_bytes_max())
    }
    fn transfer_leader(&self, to: vaultfleet::ReplicaId) -> Result<(), RequestError> {
        self.handle.transfer_leader(to)
    }
}

/// This replica in process, as the vault service's session reaches it: every
/// session it registers and every command it proposes carry the node's
/// transport key as their owner, exactly as when the same service reaches a
/// peer over the network (whose front end stamps the authenticated key), so
/// the session stays usable whichever replica leads.
struct OwnedLocal {
    handle: NodeHandle,
    owner: vaultfleet::bytes::Bytes,
}

impl NodeApi for OwnedLocal {
    fn id(&self) -> vaultfleet::ReplicaId {
        self.handle.id()
    }
    fn status(&self) -> Status {
        self.handle.status()
    }
    fn is_stopped(&self) -> bool {
        self.handle.is_stopped()
    }
    fn propose_into(
        &self,
        mut request: vaultfleet::wire::Request,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        request.owner = self.owner.clone();
        self.handle.propose_into(request, slot)
    }
    fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.handle
            .register_session_of_into(self.owner.to_vec(), slot)
    }
    fn register_session_of_into(
        &self,
        _owner: Vec<u8>,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        // Whatever owner a caller names, the session is this node's.
        self.register_session_into(slot)
    }
    fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError> {
        self.handle.read_into(query, slot)
    }
    fn change_membership_into(
        &self,
        _change: MembershipChange,
        _slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        // The vault service never changes membership; a service client may not.
        Err(RequestError::Forbidden)
    }
    fn mark_state_digest_into(&self, _slot: ResponseSlot) -> Result<(), RequestError> {
        // An operator's (admin) call, never the vault service's.
        Err(RequestError::Forbidden)
    }
    fn command_bytes_max(&self) -> Option<usize> {
        Some(self.handle.command_bytes_max())
    }
    fn transfer_leader(&self, _to: vaultfleet::ReplicaId) -> Result<(), RequestError> {
        Err(RequestError::Forbidden)
    }
}

/// Opens the vault service's session (retrying until the fleet answers or the
/// node stops), then opens the gate.
fn open_service(
    replica: u64,
    nodes: Vec<Arc<dyn NodeApi>>,
    keys: VaultKeys<NodeHsm>,
    gate: &Gate,
    stop: &AtomicBool,
) {
    let mut attempts = 0u64;
    let client = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match Client::connect_to(nodes.clone(), ClientConfig::default()) {
            Ok(client) => break client,
            Err(e) => {
                attempts += 1;
                // Every attempt at debug, one in fifty at info: a fleet
                // starting up takes a while.
                if attempts % 50 == 1 {
                    tracing::info!(replica, attempts, error = %e, "no session with the fleet yet (no leader?)");
                } else {
                    tracing::debug!(replica, attempts, error = %e, "no session with the fleet yet");
                }
                std::thread::sleep(SESSION_RETRY);
            }
        }
    };
    let service = VaultService::with_client(
        VaultServer::new(keys),
        client,
        VaultServiceConfig::default(),
    );
    // Under the lock: a reload either sees the service or is seen by it.
    let source = gate.source.lock();
    service.serve(source.clone());
    if gate.service.set(Arc::new(service)).is_err() {
        tracing::warn!(replica, "the vault service was set twice");
        return;
    }
    drop(source);
    tracing::info!(replica, "vault service serving");
}

/// Everything that only reads: the HSM, the transport key (and that the
/// `[[peer]]` table pins it), the vault keys, the bundle, the data
/// directory's identity, the network pins.
fn check(config: &NodeConfig) -> Result<Checked, StartError> {
    // `load` validated it; the fields are public, so once more.
    config.validate().map_err(StartError::Config)?;
    let hsm = crate::hsm::open_hsm(&config.hsm).map_err(StartError::Hsm)?;
    let secret = crate::hsm::open_transport_key(
        &hsm,
        &config.transport_key,
        &config.fleet_id,
        config.replica_id,
    )
    .map_err(|source| StartError::TransportKey {
        path: config.transport_key.clone(),
        source,
    })?;
    let pinned = config
        .peers
        .iter()
        .find(|p| p.id == config.replica_id)
        .and_then(|p| crate::hsm::parse_public_key(&p.transport_key).ok());
    if pinned != Some(secret.public_key()) {
        return Err(StartError::TransportKeyMismatch {
            path: config.transport_key.clone(),
        });
    }
    let setup = read_bounded("the sealed OPAQUE setup", &config.vault.opaque_setup)?;
    let keys = VaultKeys::open(hsm.clone(), &setup, config.group, config.replica_id).map_err(
        |source| StartError::VaultKeys {
            path: config.vault.opaque_setup.clone(),
            source,
        },
    )?;
    let identity = identity(&config.fleet_id, config.group, config.replica_id);
    let state = check_data_dir(&config.data_dir, &identity).map_err(StartError::DataDir)?;
    let floor = match state {
        DataDirState::Fresh => None,
        DataDirState::Ours => read_epoch(&config.data_dir).map_err(StartError::DataDir)?,
    };
    let verifier = config.fleet_verifier().map_err(StartError::Config)?;
    let prior = match state {
        DataDirState::Fresh => Prior::Fresh,
        DataDirState::Ours => Prior::DataDir(config.data_dir.clone()),
    };
    // A start is not cancelled (a stop asked meanwhile is seen after it).
    let (source, served) = bundle_source(config, &prior, &AtomicBool::new(false))?;
    let artifact =
        accepted_artifact(config, &verifier, &source, unix_now(), floor).map_err(|source| {
            StartError::Artifact {
                path: config.vault.evidence.clone(),
                source,
            }
        })?;
    let (directory, client_directory) = directories(config, &secret, &artifact)?;
    Ok(Checked {
        bootstrap: bootstrap_membership(config, &artifact),
        floor,
        artifact,
        hsm,
        secret,
        keys,
        source,
        served,
        identity,
        state,
        directory,
        client_directory,
    })
}

/// The vault listener, its gate closed until the service exists; the bundle
/// goes into every handshake from the start.
fn vault_listener(
    config: &NodeConfig,
    checked: &Checked,
    gate: &Arc<Gate>,
) -> Result<OpenServer, StartError> {
    let channel = vaultfleet_net::open::ChannelId::new(VAULT_CHANNEL_LABEL, &config.fleet_id)
        .map_err(StartError::Channel)?;
    let gate = Arc::clone(gate);
    OpenServer::start(
        channel,
        checked.secret.clone(),
        checked.source.bundle().to_vec(),
        Arc::new(move |request: &[u8]| gate.handle(request)),
        OpenServerConfig::new(config.listen.vault),
    )
    .map_err(|source| StartError::VaultListener {
        address: config.listen.vault,
        source,
    })
}

/// Claims the data directory, opens the sealed log (bootstrapping a fresh
/// one), spawns the replica and serves it; starts the remote client, the
/// metrics endpoint and the thread that opens the vault session.
fn serve(
    config: &NodeConfig,
    checked: Checked,
    transport: &NetTransport,
    gate: &Arc<Gate>,
    accepted: &Arc<parking_lot::RwLock<FleetArtifact>>,
) -> Result<Serving, StartError> {
    if matches!(checked.state, DataDirState::Fresh) {
        claim_data_dir(&config.data_dir, &checked.identity).map_err(StartError::DataDir)?;
    }
    if checked.floor != Some(checked.artifact.epoch) {
        write_epoch(&config.data_dir, checked.artifact.epoch).map_err(StartError::DataDir)?;
    }
    let log_path = config.data_dir.join(LOG_DIR);
    let mut log = Sealed::open_sled(
        &log_path,
        checked.hsm.clone(),
        SealedConfig::new(config.group, config.replica_id),
    )
    .map_err(|source| StartError::Store {
        path: log_path.clone(),
        source,
    })?;
    if config.streamed_snapshots {
        // Sealed like the log, before the replica starts: its snapshots are
        // then written to files and streamed.
        log.open_snapshot_files()
            .map_err(|source| StartError::Store {
                path: log_path.clone(),
                source,
            })?;
        tracing::info!(
            replica = config.replica_id,
            "streamed snapshots: on (snapshot files opened, sealed)"
        );
    }
    // Kept once the store is open: its lock is the data directory's, and a
    // second node on it fails above without touching the served log's files.
    if let Some(taken) = checked.served.as_ref().filter(|t| t.fetched) {
        keep_served_log(&config.data_dir, &config.vault.namespace, &taken.log)
            .map_err(StartError::DataDir)?;
    }
    let served = checked.served.map(|t| t.log);
    if !config.join {
        // Writes nothing into a store that holds a replica's state.
        let fresh = Replica::bootstrap(&mut log, &BackupVault::new(), &checked.bootstrap)
            .map_err(StartError::Replica)?;
        if fresh {
            tracing::info!(
                replica = config.replica_id,
                "bootstrapped the fleet's membership into a fresh data directory"
            );
        }
    }
    let node = spawn_replica(config, log, Arc::new(transport.clone()))?;
    let handle = node.handle();
    let registered = transport
        .register(config.group, config.replica_id, Arc::new(handle.clone()))
        .and_then(|()| {
            transport.serve_clients(
                config.group,
                Arc::new(Guarded {
                    handle: handle.clone(),
                    accepted: Arc::clone(accepted),
                    gate: Arc::clone(gate),
                }),
            )
        })
        .map_err(StartError::Serve)
        .and_then(|()| {
            RemoteClient::start(checked.client_directory, RemoteConfig::default())
                .map_err(StartError::Remote)
        });
    let remote = match registered {
        Ok(remote) => remote,
        Err(e) => {
            let _ = node.shutdown();
            return Err(e);
        }
    };
    let fail = |remote: &RemoteClient, node: Standalone, metrics: Option<&MetricsServer>| {
        if let Some(m) = metrics {
            m.shutdown();
        }
        remote.shutdown();
        let _ = node.shutdown();
    };
    let probe = Arc::new(NodeProbe {
        handle: handle.clone(),
        hsm: checked.hsm,
        data_dir: config.data_dir.clone(),
        gate: Arc::clone(gate),
        stopped: AtomicBool::new(false),
        last: parking_lot::Mutex::new(None),
    });
    let metrics = match config
        .listen
        .metrics
        .map(|addr| MetricsServer::start(addr, Arc::clone(&probe) as Arc<dyn Probe>))
        .transpose()
    {
        Ok(m) => m,
        Err(e) => {
            fail(&remote, node, None);
            return Err(StartError::Metrics(e));
        }
    };
    let nodes = match session_nodes(config, &handle, &remote, checked.secret.public_key()) {
        Ok(nodes) => nodes,
        Err(e) => {
            fail(&remote, node, metrics.as_ref());
            return Err(StartError::Remote(e));
        }
    };
    let stop_session = Arc::new(AtomicBool::new(false));
    let spawned = {
        let gate = Arc::clone(gate);
        let stop = Arc::clone(&stop_session);
        let replica = config.replica_id;
        let keys = checked.keys;
        std::thread::Builder::new()
            .name("vaultfleet-node-session".into())
            .spawn(move || open_service(replica, nodes, keys, &gate, &stop))
    };
    let session_thread = match spawned {
        Ok(t) => t,
        Err(source) => {
            fail(&remote, node, metrics.as_ref());
            return Err(StartError::Thread(source));
        }
    };
    // Detached: it ends within a check's time once the probe says stopped.
    let watched = Arc::clone(&probe);
    if let Err(source) = std::thread::Builder::new()
        .name("vaultfleet-node-health".into())
        .spawn(move || watch_health(&watched))
    {
        stop_session.store(true, Ordering::SeqCst);
        probe.stopped.store(true, Ordering::SeqCst);
        fail(&remote, node, metrics.as_ref());
        return Err(StartError::Thread(source));
    }
    Ok(Serving {
        node,
        handle,
        remote,
        metrics,
        probe,
        stop_session,
        session_thread,
        served,
    })
}

/// What a daemon is told from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeSignal {
    /// SIGTERM or SIGINT: stop gracefully.
    Terminate,
    /// Standard input reached its end (when asked to watch it): stop
    /// gracefully.
    StdinClosed,
    /// SIGHUP: re-read the config, the evidence and the witness log
    /// ([`RunningNode::reload`]).
    Reload,
}

/// Why the signals could not be watched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT/SIGHUP handlers")]
    Handler(#[source] std::io::Error),
    /// A watching thread could not be started.
    #[error("cannot start a thread watching signals or stdin")]
    Thread(#[source] std::io::Error),
}

/// Watches SIGTERM, SIGINT and SIGHUP (and, with `watch_stdin`, stdin to its
/// end) from threads of their own; every event is sent on the returned
/// channel.
pub fn signals(watch_stdin: bool) -> Result<std::sync::mpsc::Receiver<NodeSignal>, SignalError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (tx, rx) = std::sync::mpsc::channel();
    let mut incoming = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(SignalError::Handler)?;
    let on_signal = tx.clone();
    // Detached: they end with the process.
    std::thread::Builder::new()
        .name("vaultfleet-signals".into())
        .spawn(move || {
            for signal in incoming.forever() {
                let event = if signal == SIGHUP {
                    NodeSignal::Reload
                } else {
                    NodeSignal::Terminate
                };
                if on_signal.send(event).is_err() {
                    return;
                }
            }
        })
        .map_err(SignalError::Thread)?;
    if watch_stdin {
        std::thread::Builder::new()
            .name("vaultfleet-stdin-watch".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = tx.send(NodeSignal::StdinClosed);
            })
            .map_err(SignalError::Thread)?;
    }
    Ok(rx)
}

/// Serves `node`'s events (from [`signals`]) until one asks it to stop:
/// returns that event (`None` if every sender is gone). On
/// [`NodeSignal::Reload`] `reload` runs on a thread of its own, so a stop is
/// seen while it runs: it then cancels the reload's fetch of the served log
/// ([`RunningNode::cancel_fetches`]) and returns once the reload has ended.
/// Reloads queued meanwhile collapse into one (run after the current one),
/// and a stop queued behind reloads wins over them. `tick` runs between
/// events (at least every 50 ms), on the caller's thread.
pub fn serve_signals<R, T>(
    node: &RunningNode,
    events: &std::sync::mpsc::Receiver<NodeSignal>,
    reload: R,
    mut tick: T,
) -> Option<NodeSignal>
where
    R: Fn(&RunningNode) + Sync,
    T: FnMut(&RunningNode),
{
    use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
    let reload = &reload;
    std::thread::scope(|scope| {
        let mut running: Option<std::thread::ScopedJoinHandle<'_, ()>> = None;
        let mut pending = false;
        let cause = 'events: loop {
            match events.recv_timeout(SIGNAL_POLL) {
                Ok(NodeSignal::Reload) => {
                    pending = true;
                    // Every reload queued now is this one; a stop queued
                    // behind them wins.
                    loop {
                        match events.try_recv() {
                            Ok(NodeSignal::Reload) => {}
                            Ok(stop) => break 'events Some(stop),
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                }
                Ok(stop) => break Some(stop),
                Err(RecvTimeoutError::Disconnected) => break None,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if running.as_ref().is_some_and(|t| t.is_finished()) {
                if let Some(t) = running.take() {
                    join_reload(t, "running on as before");
                }
            }
            if pending && running.is_none() {
                pending = false;
                match std::thread::Builder::new()
                    .name("vaultfleet-reload".into())
                    .spawn_scoped(scope, move || reload(node))
                {
                    Ok(t) => running = Some(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "no thread for the reload: reloading on the signal loop");
                        reload(node);
                    }
                }
            }
            tick(node);
        };
        node.cancel_fetches();
        // Joined here, not by the scope: a scope whose thread panicked
        // panics itself, and the stop must still run.
        if let Some(t) = running {
            tracing::info!("stop requested during a reload: its fetch is abandoned");
            join_reload(t, "stopping");
        }
        cause
    })
}

/// Waits for a reload's thread (its fetch cancelled or done, it ends soon)
/// and logs a panic in it, which does not go further: the node goes on
/// (`then`).
fn join_reload(thread: std::thread::ScopedJoinHandle<'_, ()>, then: &str) {
    if thread.join().is_err() {
        tracing::error!("a reload panicked; {then}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vaultfleet_audit::fleet::ReplicaKeys;

    fn artifact() -> FleetArtifact {
        let replica = |id, dc: &str| ReplicaKeys {
            id,
            datacenter: dc.into(),
            response_key: [id as u8; 32],
            transport_key: [id as u8 + 100; 32],
            opaque_key: [id as u8 + 200; 32],
        };
        FleetArtifact {
            fleet_id: "f".into(),
            epoch: 2,
            replicas: vec![replica(1, "a"), replica(2, "b"), replica(6, "c")],
            voters: vec![1, 2],
            learners: vec![6],
            not_before: 0,
            not_after: 1,
        }
    }

    #[test]
    fn membership_follows_the_accepted_artifact() {
        let a = artifact();
        let add = |id, dc: &str| MembershipChange::AddLearner {
            id,
            datacenter: dc.into(),
        };
        assert_eq!(membership_allowed(&a, &add(6, "c")), Ok(()));
        assert!(
            membership_allowed(&a, &add(6, "a")).is_err(),
            "another datacenter"
        );
        assert!(membership_allowed(&a, &add(7, "c")).is_err(), "not listed");
        assert_eq!(
            membership_allowed(&a, &MembershipChange::Promote { id: 2 }),
            Ok(())
        );
        assert!(
            membership_allowed(&a, &MembershipChange::Promote { id: 6 }).is_err(),
            "a learner of the artifact is not promoted"
        );
        assert_eq!(
            membership_allowed(&a, &MembershipChange::Remove { id: 5 }),
            Ok(())
        );
    }

    #[test]
    fn a_data_directory_identity_names_its_replica_group_and_fleet() {
        let line = identity("fleet \"x\"", 3, 7);
        assert_eq!(
            describe_identity(line.as_bytes()),
            "replica 7 of group 3 in fleet \"fleet \\\"x\\\"\""
        );
        assert_eq!(describe_identity(b"garbage"), "an unreadable identity file");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        assert!(matches!(
            check_data_dir(&path, &line),
            Ok(DataDirState::Fresh)
        ));
        claim_data_dir(&path, &line).unwrap();
        assert!(matches!(
            check_data_dir(&path, &line),
            Ok(DataDirState::Ours)
        ));
        let other = identity("fleet \"x\"", 3, 8);
        assert!(matches!(
            check_data_dir(&path, &other),
            Err(DataDirError::Foreign { .. })
        ));
        assert!(claim_data_dir(&path, &line).is_err(), "never claimed twice");
    }
}
