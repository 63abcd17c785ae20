//! The operator's calls to running nodes: status, membership and leadership,
//! over the network crate's client protocol (Noise IK) with an admin key.
//!
//! Every node's config lists the admin keys (`[[admin_key]]`) it allows with
//! [`ClientRole::Admin`](vaultfleet_net::ClientRole::Admin); a key it does not
//! pin fails the handshake (the node is then reported unreachable), and a key
//! pinned only as a service key gets `Forbidden` for a membership change or a
//! leadership transfer. Each node logs every admin call with the caller's key
//! id and the op.
//!
//! [`AdminConfig`] is the operator's side, `admin.toml`:
//!
//! ```toml
//! fleet_id = "fleet-1"
//! group = 1                  # the raft group (default 1)
//! key_file = "admin.key"     # 64 hex digits, the admin's X25519 secret; mode 0600
//!
//! [[peer]]                   # every replica to reach, as in the nodes' configs
//! id = 1
//! address = "127.0.0.1:7001"
//! datacenter = "dc-a"
//! transport_key = "…64 hex digits…"
//! ```
//!
//! [`Admin`] is the handle the `vaultfleet admin` command uses. Every call is
//! bounded in time ([`AdminOptions`]): a replica that does not answer a status
//! request within `status_wait` is reported unreachable (not an error of the
//! whole call), and a membership change or a leadership transfer that finds no
//! leader, or no outcome, within `call_timeout` fails with
//! [`AdminError::Unavailable`] or [`AdminError::NoLeader`]. A refusal by the
//! fleet (the leader's typed [`RequestError`]) is [`AdminError::Refused`].
//!
//! [`Admin::remove_held`] removes a replica, then asks every voter of the new
//! configuration until each reports holding it ([`Held`]): raft-rs takes a
//! configuration when it applies it, so until every voter has, the fleet may
//! still need a majority of the configuration before, and the removed replica
//! must keep running (docs/operations.md). `vaultfleet admin remove` does
//! this and exits 3 if a voter does not hold the change in time.
//!
//! [`Admin::compare_state`] is etcd's `hashkv` for the fleet: it proposes a
//! state digest marker through the leader; every replica applying it digests
//! its replicated state at the marker's index, and the call collects each
//! replica's digest from its status and groups the replicas that agree. It
//! needs every replica on a build that knows markers (an older one applies the
//! marker as a no-op and is reported as having missed it, never as diverged).
// An operator's command-line client waits on the wall clock (bounded waits for
// answers over the network); it is not part of the deterministic core.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft::StateRole;
use serde::Deserialize;
use vaultfleet::replica::{
    MembershipChange, Reply, RequestError, StateDigest, Status, STATE_DIGEST_BYTES,
};
use vaultfleet::runtime::NodeApi;
use vaultfleet::ReplicaId;
use vaultfleet_net::keys::KEY_BYTES;
use vaultfleet_net::{
    DirectoryError, KeyError, PeerDirectory, PeerEntry, PublicKey, RemoteClient, RemoteConfig,
    RemoteError, RemoteNode, StaticSecret,
};
use zeroize::Zeroizing;

use crate::config::PeerConfig;

/// Most `[[peer]]` tables an admin config may list (the engine's member
/// limit).
pub const ADMIN_PEERS_MAX: usize = vaultfleet::config::MEMBERS_MAX;

/// Largest admin config file read, in bytes.
pub const ADMIN_CONFIG_BYTES_MAX: u64 = 1 << 20;

/// Largest key file read, in bytes (64 hex digits and some white space).
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// How often a waiting call looks at the statuses again.
const POLL: Duration = Duration::from_millis(10);

/// How often a leadership transfer is asked again while the target does not
/// lead yet.
const TRANSFER_RETRY: Duration = Duration::from_millis(300);

fn default_group() -> u64 {
    1
}

/// The operator's `admin.toml` (unknown fields refused).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The fleet's id (bound into every handshake; the nodes' `fleet_id`).
    pub fleet_id: String,
    /// The raft group the fleet's vault runs in (default 1).
    #[serde(default = "default_group")]
    pub group: u64,
    /// The file holding the admin's X25519 secret key as 64 hex digits; it
    /// must not be readable or writable by group or others (mode 0600). A
    /// relative path is taken against the config file's folder.
    pub key_file: PathBuf,
    /// Every replica to reach (TOML `[[peer]]`, as in the nodes' configs).
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
}

/// An admin config that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminConfigError {
    /// The config file could not be read.
    #[error("could not read the admin config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is above [`ADMIN_CONFIG_BYTES_MAX`].
    #[error(
        "the admin config {path} is {bytes} bytes, above the limit of {ADMIN_CONFIG_BYTES_MAX}"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The config is not valid TOML for an admin config.
    #[error("the admin config {path} is invalid")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// No `[[peer]]` table.
    #[error("the admin config lists no [[peer]]")]
    NoPeers,
    /// More `[[peer]]` tables than [`ADMIN_PEERS_MAX`].
    #[error("the admin config lists {count} peers, above the limit of {ADMIN_PEERS_MAX}")]
    TooManyPeers {
        /// How many.
        count: usize,
    },
    /// Two `[[peer]]` tables with one id.
    #[error("replica {id} is listed twice")]
    DuplicatePeer {
        /// The id.
        id: ReplicaId,
    },
    /// A peer's `transport_key` is not 64 hex digits.
    #[error("the transport key of replica {id} is invalid")]
    PeerKey {
        /// The replica.
        id: ReplicaId,
        /// Why.
        #[source]
        source: HexKeyError,
    },
    /// The key file cannot be used.
    #[error("the admin key file {path} cannot be used")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeyFileError,
    },
    /// The directory made of the config was refused (a bad fleet id, a peer
    /// pinned twice to one key at two addresses, …).
    #[error("the peers do not make a valid directory")]
    Directory(#[from] DirectoryError),
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// It could not be read.
    #[error("could not read it")]
    Read(#[source] std::io::Error),
    /// Group or others may read or write it.
    #[error("its mode is {mode:04o}: group and others must have no access (chmod 600)")]
    Mode {
        /// Its permission bits.
        mode: u32,
    },
    /// It is above a few kilobytes: not a key file.
    #[error("it is {bytes} bytes: not a key file")]
    TooLarge {
        /// Its size.
        bytes: u64,
    },
    /// Its content is not 64 hex digits.
    #[error("its content is not a key")]
    Hex(#[source] HexKeyError),
    /// The key could not be made.
    #[error("the key could not be made")]
    Key(#[source] KeyError),
}

/// Text that is not a 32-byte key in hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HexKeyError {
    /// Not 64 characters.
    #[error("{found} characters where 64 hex digits were expected")]
    Length {
        /// Characters found.
        found: usize,
    },
    /// A character that is not a hex digit.
    #[error("character {at} is not a hex digit")]
    Digit {
        /// Its position (from 0).
        at: usize,
    },
}

/// The 32 bytes `text` (64 hex digits, surrounding white space ignored)
/// spells, in memory wiped on drop.
pub fn parse_key_hex(text: &str) -> Result<Zeroizing<[u8; KEY_BYTES]>, HexKeyError> {
    let text = text.trim();
    let mut out = Zeroizing::new([0u8; KEY_BYTES]);
    crate::hsm::decode_key_hex(text, &mut out).map_err(|e| match e {
        crate::hsm::KeyHexError::Length { .. } => HexKeyError::Length {
            found: text.chars().count(),
        },
        crate::hsm::KeyHexError::Digit { at } => HexKeyError::Digit { at },
    })?;
    Ok(out)
}

/// Reads a secret key file: 64 hex digits, mode 0600 (no access for group
/// and others; checked on Unix).
pub fn read_key_file(path: &Path) -> Result<StaticSecret, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(KeyFileError::Read)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Mode { mode });
        }
    }
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(KeyFileError::TooLarge { bytes: meta.len() });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(KeyFileError::Read)?);
    let bytes = parse_key_hex(&text).map_err(KeyFileError::Hex)?;
    StaticSecret::from_bytes(bytes).map_err(KeyFileError::Key)
}

impl AdminConfig {
    /// Reads, parses and checks `path`; a relative `key_file` is resolved
    /// against the file's folder. The key file itself is read by
    /// [`directory`](Self::directory).
    pub fn load(path: &Path) -> Result<AdminConfig, AdminConfigError> {
        let read = |source| AdminConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(read)?.len();
        if bytes > ADMIN_CONFIG_BYTES_MAX {
            return Err(AdminConfigError::TooLarge {
                path: path.to_owned(),
                bytes,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let mut config = Self::parse(&text).map_err(|source| AdminConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        if config.key_file.is_relative() {
            let folder = path.parent().unwrap_or(Path::new("."));
            config.key_file = folder.join(&config.key_file);
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses an admin config from TOML text (paths left as written).
    pub fn parse(text: &str) -> Result<AdminConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks the peers: at least one, at most [`ADMIN_PEERS_MAX`], distinct
    /// ids, valid transport keys.
    pub fn validate(&self) -> Result<(), AdminConfigError> {
        self.peer_keys().map(|_| ())
    }

    fn peer_keys(&self) -> Result<Vec<(&PeerConfig, PublicKey)>, AdminConfigError> {
        if self.peers.is_empty() {
            return Err(AdminConfigError::NoPeers);
        }
        if self.peers.len() > ADMIN_PEERS_MAX {
            return Err(AdminConfigError::TooManyPeers {
                count: self.peers.len(),
            });
        }
        let mut seen = BTreeSet::new();
        self.peers
            .iter()
            .map(|p| {
                if !seen.insert(p.id) {
                    return Err(AdminConfigError::DuplicatePeer { id: p.id });
                }
                let key = parse_key_hex(&p.transport_key)
                    .map_err(|source| AdminConfigError::PeerKey { id: p.id, source })?;
                Ok((p, PublicKey::from_bytes(*key)))
            })
            .collect()
    }

    /// The admin's client directory: the key from `key_file` and every peer
    /// pinned.
    pub fn directory(&self) -> Result<PeerDirectory, AdminConfigError> {
        let peers = self.peer_keys()?;
        let secret = read_key_file(&self.key_file).map_err(|source| AdminConfigError::KeyFile {
            path: self.key_file.clone(),
            source,
        })?;
        let mut directory = PeerDirectory::client(self.fleet_id.clone(), secret)?;
        for (peer, key) in peers {
            directory.insert(
                peer.id,
                PeerEntry {
                    address: peer.address,
                    datacenter: peer.datacenter.clone(),
                    public_key: key,
                },
            )?;
        }
        Ok(directory)
    }
}

/// The bounds of an [`Admin`]'s calls.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminOptions {
    /// How long a replica has to answer a status request before it is
    /// reported unreachable.
    pub status_wait: Duration,
    /// How long a membership change or a leadership transfer may take, with
    /// every retry (finding the leader, following `NotLeader`, a learner
    /// catching up before its promotion).
    pub call_timeout: Duration,
    /// How long [`Admin::compare_state`] waits, once the marker is applied
    /// on the leader, for every replica to report its digest (a replica
    /// still behind then is reported as such).
    pub digest_wait: Duration,
    /// How long [`Admin::remove_held`] (and [`Admin::wait_held`]) waits,
    /// after a removal, for every voter of the new configuration to report
    /// holding it (plus the status rounds in flight then: at most two of
    /// `status_wait` for `remove_held`, one for `wait_held`).
    pub held_wait: Duration,
    /// The remote client's settings (its `status_interval` is how often a
    /// node is asked for its status while a call waits).
    pub remote: RemoteConfig,
}

impl Default for AdminOptions {
    fn default() -> Self {
        let mut remote = RemoteConfig::default();
        remote.net.worker_threads = 1;
        remote.status_interval = Duration::from_millis(250);
        remote.in_flight_max = 16;
        Self {
            status_wait: Duration::from_secs(3),
            call_timeout: Duration::from_secs(20),
            digest_wait: Duration::from_secs(10),
            held_wait: Duration::from_secs(10),
            remote,
        }
    }
}

/// An admin call that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The admin config cannot be used.
    #[error("invalid admin config")]
    Config(#[from] AdminConfigError),
    /// The remote client could not start.
    #[error("could not start the admin's network client")]
    Start(#[source] RemoteError),
    /// The replica is not in the admin's directory.
    #[error("replica {id} is not listed in the admin config")]
    UnknownReplica {
        /// The replica.
        id: ReplicaId,
    },
    /// No replica answered as the leader in time.
    #[error("no leader found in {waited:?} (replicas that did not answer: {unreachable:?})")]
    NoLeader {
        /// Time spent.
        waited: Duration,
        /// Replicas that had not answered the last status request.
        unreachable: Vec<ReplicaId>,
    },
    /// The fleet refused the call (the leader's answer; `Forbidden`: this key
    /// is not an admin key of the fleet; `ConfChangeRejected(NotInAcceptedFleet)`:
    /// the fleet's accepted artifact does not list the replica so).
    #[error("the fleet refused")]
    Refused(#[source] RequestError),
    /// No outcome in time (the change may or may not have been made; check
    /// with `status`).
    #[error("no outcome in {waited:?}{}", match .last { Some(e) => format!(" (last answer: {e})"), None => String::new() })]
    Unavailable {
        /// Time spent.
        waited: Duration,
        /// The last retryable answer.
        last: Option<RequestError>,
    },
    /// Leadership can go only to a voter (the leader's membership does not
    /// list this replica as one).
    #[error("replica {id} is not a voter")]
    NotAVoter {
        /// The replica.
        id: ReplicaId,
    },
    /// The leader answered with a reply of another kind (a bug).
    #[error("the leader answered with another kind of reply than the call's")]
    UnexpectedReply,
}

impl AdminError {
    /// True if the fleet refused the call (the command's exit code 1), rather
    /// than the call failing (exit code 2).
    pub fn is_refusal(&self) -> bool {
        matches!(self, AdminError::Refused(_) | AdminError::NotAVoter { .. })
    }
}

/// One replica's answer to a status request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    /// The replica.
    pub id: ReplicaId,
    /// Its datacenter, as the admin's directory lists it.
    pub datacenter: String,
    /// Its status; `None` if it did not answer within
    /// [`AdminOptions::status_wait`] (down, unreachable, or this key not
    /// pinned by it).
    pub status: Option<Status>,
}

/// The fleet's membership as its leader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// The leader.
    pub leader: ReplicaId,
    /// Its term.
    pub term: u64,
    /// Voters, ascending.
    pub voters: Vec<ReplicaId>,
    /// Learners, ascending.
    pub learners: Vec<ReplicaId>,
    /// The leader's status (with every follower's progress).
    pub status: Status,
}

/// Whether each voter of a configuration holds it: has applied it, as its
/// fresh status says ([`Admin::remove_held`], [`Admin::wait_held`]). raft-rs
/// takes a configuration when it applies it, so a voter that has not applied a
/// removal still counts votes among the voters of before, the removed replica
/// included: shut a removed replica down only once [`Held::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Held {
    /// The configuration's voters, ascending.
    pub voters: Vec<ReplicaId>,
    /// Its learners, ascending.
    pub learners: Vec<ReplicaId>,
    /// The applied index a voter must have reached to count as holding it:
    /// the applied index of the leader that answered the change, in the first
    /// status it showed with the new configuration (so at least the change's
    /// index, unless that leader restarted meanwhile from a snapshot older
    /// than a change before: see docs/operations.md). A
    /// voter reporting the same voters and learners below it has not applied
    /// the change (it may hold an equal configuration from before, e.g. after
    /// a change and its reversal). `None`: that leader did not report one, so
    /// no voter counts as holding.
    pub applied_min: Option<u64>,
    /// The voters that report holding it, ascending.
    pub holding: Vec<ReplicaId>,
    /// The voters that report another configuration, or this one below
    /// `applied_min`, ascending by id.
    pub other: Vec<HeldElsewhere>,
    /// The voters that did not answer (down, unreachable, or not pinning this
    /// key), ascending.
    pub silent: Vec<ReplicaId>,
    /// The voters the admin's directory does not list (so it cannot ask
    /// them), ascending.
    pub unlisted: Vec<ReplicaId>,
}

/// A voter that does not (yet) hold a configuration ([`Held::other`]): what
/// it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldElsewhere {
    /// The voter.
    pub id: ReplicaId,
    /// The voters of the configuration it holds, ascending.
    pub voters: Vec<ReplicaId>,
    /// Its learners, ascending.
    pub learners: Vec<ReplicaId>,
    /// Its applied index.
    pub applied: u64,
}

impl Held {
    /// True if every voter reports holding the configuration.
    pub fn complete(&self) -> bool {
        self.applied_min.is_some()
            && self.other.is_empty()
            && self.silent.is_empty()
            && self.unlisted.is_empty()
            && self.holding.len() == self.voters.len()
    }

    /// Which voters of `voters`/`learners` hold them, from `reports` (fresh
    /// statuses; a voter with none is silent, one not in `listed` unlisted).
    pub fn from_reports(
        cs: &raft::prelude::ConfState,
        applied_min: Option<u64>,
        listed: &BTreeSet<ReplicaId>,
        reports: &[ReplicaReport],
    ) -> Held {
        let mut voters = cs.voters.clone();
        voters.sort_unstable();
        voters.dedup();
        let mut learners = cs.learners.clone();
        learners.sort_unstable();
        learners.dedup();
        let mut held = Held {
            voters,
            learners,
            applied_min,
            holding: Vec::new(),
            other: Vec::new(),
            silent: Vec::new(),
            unlisted: Vec::new(),
        };
        for &id in &held.voters {
            if !listed.contains(&id) {
                held.unlisted.push(id);
                continue;
            }
            let status = reports
                .iter()
                .find(|r| r.id == id)
                .and_then(|r| r.status.as_ref());
            match status {
                Some(s)
                    if s.voters == held.voters
                        && s.learners == held.learners
                        && applied_min.is_some_and(|min| s.applied >= min) =>
                {
                    held.holding.push(id);
                }
                Some(s) => held.other.push(HeldElsewhere {
                    id,
                    voters: s.voters.clone(),
                    learners: s.learners.clone(),
                    applied: s.applied,
                }),
                None => held.silent.push(id),
            }
        }
        held
    }
}

/// What one replica reported in a [`StateComparison`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestReport {
    /// Its digest of its replicated state at the marker's index.
    Digest([u8; STATE_DIGEST_BYTES]),
    /// It answered, but had not applied the marker within
    /// [`AdminOptions::digest_wait`] (it lags, or is cut off from the leader).
    Behind {
        /// Its applied index at its last answer.
        applied: u64,
    },
    /// It applied past the marker but holds no digest for it: it installed a
    /// snapshot beyond the marker instead of applying it, more markers
    /// followed than it keeps, it could not capture its state (logged), or it
    /// runs a build from before markers. Not a divergence: compare again.
    Missed {
        /// Its applied index at its last answer.
        applied: u64,
    },
    /// It answered no status request (down, unreachable, or this admin key
    /// is not pinned by it).
    Unreachable,
}

/// One replica's line of a [`StateComparison`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDigest {
    /// The replica.
    pub id: ReplicaId,
    /// Its datacenter, as the admin's directory lists it.
    pub datacenter: String,
    /// What it reported.
    pub report: DigestReport,
}

/// Replicas that reported the same digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestGroup {
    /// The digest.
    pub digest: [u8; STATE_DIGEST_BYTES],
    /// The replicas reporting it, ascending.
    pub replicas: Vec<ReplicaId>,
}

impl DigestGroup {
    /// The digest in lower-case hex.
    pub fn hex(&self) -> String {
        hex_digest(&self.digest)
    }
}

/// The digest in lower-case hex (64 digits).
pub fn hex_digest(digest: &[u8; STATE_DIGEST_BYTES]) -> String {
    StateDigest {
        index: 0,
        digest: *digest,
    }
    .hex()
}

/// Every replica's digest of its replicated state at one applied index
/// ([`Admin::compare_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateComparison {
    /// The marker's log index: every digest is of the state there.
    pub index: u64,
    /// The leader that took the marker.
    pub leader: ReplicaId,
    /// Every listed replica, ascending by id.
    pub replicas: Vec<ReplicaDigest>,
    /// The replicas that reported a digest, grouped by digest: the largest
    /// group first (ties by digest). More than one group is a divergence.
    pub groups: Vec<DigestGroup>,
}

impl StateComparison {
    /// True if two replicas reported different digests at the index.
    pub fn diverged(&self) -> bool {
        self.groups.len() > 1
    }

    /// True if every listed replica reported a digest.
    pub fn complete(&self) -> bool {
        self.replicas
            .iter()
            .all(|r| matches!(r.report, DigestReport::Digest(_)))
    }

    fn group(&mut self) {
        let mut by_digest: BTreeMap<[u8; STATE_DIGEST_BYTES], Vec<ReplicaId>> = BTreeMap::new();
        for r in &self.replicas {
            if let DigestReport::Digest(d) = r.report {
                by_digest.entry(d).or_default().push(r.id);
            }
        }
        let mut groups: Vec<DigestGroup> = by_digest
            .into_iter()
            .map(|(digest, replicas)| DigestGroup { digest, replicas })
            .collect();
        // Stable: equal sizes stay in digest order.
        groups.sort_by_key(|g| std::cmp::Reverse(g.replicas.len()));
        self.groups = groups;
    }
}

/// The operator's handle on a running fleet: an admin key's remote client.
pub struct Admin {
    client: RemoteClient,
    group: u64,
    options: AdminOptions,
    /// One connection per replica, made on first use.
    nodes: Mutex<BTreeMap<ReplicaId, Arc<RemoteNode>>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("client", &self.client)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.client.shutdown();
    }
}

impl Admin {
    /// An admin handle from `admin.toml`'s config (reads the key file), with
    /// the default bounds.
    pub fn connect(config: &AdminConfig) -> Result<Admin, AdminError> {
        Self::connect_with(config, AdminOptions::default())
    }

    /// An admin handle from `admin.toml`'s config (reads the key file).
    pub fn connect_with(config: &AdminConfig, options: AdminOptions) -> Result<Admin, AdminError> {
        Self::new(config.directory()?, config.group, options)
    }

    /// An admin handle for group `group` proving the key of `directory` (a
    /// client directory, [`PeerDirectory::client`]) to the replicas it pins.
    pub fn new(
        directory: PeerDirectory,
        group: u64,
        options: AdminOptions,
    ) -> Result<Admin, AdminError> {
        let client =
            RemoteClient::start(directory, options.remote.clone()).map_err(AdminError::Start)?;
        Ok(Admin {
            client,
            group,
            options,
            nodes: Mutex::new(BTreeMap::new()),
        })
    }

    /// The replicas the admin's directory lists, ascending.
    pub fn replicas(&self) -> Vec<ReplicaId> {
        self.client.directory().peers().map(|(id, _)| id).collect()
    }

    /// Replica `id`'s datacenter, as the admin's directory lists it.
    pub fn datacenter(&self, id: ReplicaId) -> Option<String> {
        self.client
            .directory()
            .peer(id)
            .map(|p| p.datacenter.clone())
    }

    fn node(&self, id: ReplicaId) -> Result<Arc<RemoteNode>, AdminError> {
        let mut nodes = self.nodes.lock();
        if let Some(node) = nodes.get(&id) {
            if !node.is_stopped() {
                return Ok(Arc::clone(node));
            }
        }
        let node = self.client.node(self.group, id).map_err(|e| match e {
            RemoteError::UnknownReplica(id) => AdminError::UnknownReplica { id },
            other => AdminError::Start(other),
        })?;
        nodes.insert(id, Arc::clone(&node));
        Ok(node)
    }

    /// The status of replica `replica`, or of every listed replica (`None`),
    /// ascending by id. Each is asked afresh; one that does not answer within
    /// `status_wait` is reported with no status.
    pub fn status(&self, replica: Option<ReplicaId>) -> Result<Vec<ReplicaReport>, AdminError> {
        self.reports(replica, false)
    }

    /// [`status`](Self::status); with `until_leader`, it stops waiting as
    /// soon as one fresh status says it leads.
    fn reports(
        &self,
        replica: Option<ReplicaId>,
        until_leader: bool,
    ) -> Result<Vec<ReplicaReport>, AdminError> {
        let ids = match replica {
            Some(id) => vec![id],
            None => self.replicas(),
        };
        self.reports_of(ids, until_leader)
    }

    /// [`reports`](Self::reports) of the replicas `ids`, all asked at once.
    fn reports_of(
        &self,
        ids: Vec<ReplicaId>,
        until_leader: bool,
    ) -> Result<Vec<ReplicaReport>, AdminError> {
        let directory = self.client.directory();
        let mut asked = Vec::with_capacity(ids.len());
        for id in ids {
            let datacenter = directory
                .peer(id)
                .map(|p| p.datacenter.clone())
                .ok_or(AdminError::UnknownReplica { id })?;
            let node = self.node(id)?;
            let seen = node.statuses_received();
            asked.push((id, datacenter, node, seen));
        }
        let deadline = Instant::now() + self.options.status_wait;
        loop {
            let fresh = |(_, _, node, seen): &(ReplicaId, String, Arc<RemoteNode>, u64)| {
                node.statuses_received() > *seen
            };
            let leads = |a: &(ReplicaId, String, Arc<RemoteNode>, u64)| {
                fresh(a) && a.2.status().role == StateRole::Leader
            };
            if asked.iter().all(fresh)
                || (until_leader && asked.iter().any(leads))
                || Instant::now() >= deadline
            {
                break;
            }
            std::thread::sleep(POLL);
        }
        Ok(asked
            .into_iter()
            .map(|(id, datacenter, node, seen)| ReplicaReport {
                id,
                datacenter,
                status: (node.statuses_received() > seen).then(|| node.status()),
            })
            .collect())
    }

    /// The leader among fresh statuses: the replica reporting itself leader
    /// in the highest term. Retries until `deadline`.
    fn leader(&self, deadline: Instant) -> Result<(ReplicaId, Status), AdminError> {
        let started = Instant::now();
        loop {
            let reports = self.reports(None, true)?;
            let leader = reports
                .iter()
                .filter_map(|r| r.status.as_ref())
                .filter(|s| s.role == StateRole::Leader)
                .max_by_key(|s| s.term);
            if let Some(status) = leader {
                return Ok((status.id, status.clone()));
            }
            if Instant::now() >= deadline {
                return Err(AdminError::NoLeader {
                    waited: started.elapsed(),
                    unreachable: reports
                        .iter()
                        .filter(|r| r.status.is_none())
                        .map(|r| r.id)
                        .collect(),
                });
            }
            std::thread::sleep(self.options.remote.status_interval.min(TRANSFER_RETRY));
        }
    }

    /// The leader every replica that answers a fresh status request names,
    /// if they agree and it says it leads; `None` otherwise (an election, no
    /// answer). Takes at most `status_wait`.
    pub fn agreed_leader(&self) -> Option<ReplicaId> {
        let reports = self.status(None).ok()?;
        let statuses: Vec<&Status> = reports.iter().filter_map(|r| r.status.as_ref()).collect();
        let leader = statuses.first()?.leader?;
        let agreed = statuses.iter().all(|s| s.leader == Some(leader));
        let leads = statuses
            .iter()
            .any(|s| s.id == leader && s.role == StateRole::Leader);
        (agreed && leads).then_some(leader)
    }

    /// The applied index of every replica that answers a fresh status
    /// request, by ascending id (one that does not answer is left out).
    pub fn applied_indexes(&self) -> Vec<u64> {
        self.status(None)
            .map(|reports| {
                reports
                    .iter()
                    .filter_map(|r| r.status.as_ref().map(|s| s.applied))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The membership as the leader reports it.
    pub fn members(&self) -> Result<Members, AdminError> {
        let deadline = Instant::now() + self.options.call_timeout;
        let (leader, status) = self.leader(deadline)?;
        Ok(Members {
            leader,
            term: status.term,
            voters: status.voters.clone(),
            learners: status.learners.clone(),
            status,
        })
    }

    /// Adds replica `id` of `datacenter` as a learner; returns the membership
    /// that results (voters, learners).
    pub fn add_learner(
        &self,
        id: ReplicaId,
        datacenter: &str,
    ) -> Result<raft::prelude::ConfState, AdminError> {
        self.change(MembershipChange::AddLearner {
            id,
            datacenter: datacenter.to_owned(),
        })
    }

    /// Promotes learner `id` to voter once it has caught up (waiting for it
    /// within `call_timeout`).
    pub fn promote(&self, id: ReplicaId) -> Result<raft::prelude::ConfState, AdminError> {
        self.change(MembershipChange::Promote { id })
    }

    /// Removes replica `id` (voter or learner).
    pub fn remove(&self, id: ReplicaId) -> Result<raft::prelude::ConfState, AdminError> {
        self.change(MembershipChange::Remove { id })
    }

    /// Removes replica `id`, then waits until every voter of the new
    /// configuration holds it ([`wait_held`](Self::wait_held), measured
    /// against the applied index of the leader that answered). What
    /// `vaultfleet admin remove` does: exit 0 only if [`Held::complete`].
    pub fn remove_held(
        &self,
        id: ReplicaId,
    ) -> Result<(raft::prelude::ConfState, Held), AdminError> {
        let (cs, answered_by) = self.change_answered(MembershipChange::Remove { id })?;
        // One deadline for both waits below.
        let deadline = Instant::now() + self.options.held_wait;
        let mut voters = cs.voters.clone();
        voters.sort_unstable();
        let mut learners = cs.learners.clone();
        learners.sort_unstable();
        // The leader's status can be read before the turn that answered
        // publishes it. One that shows the new configuration is from that
        // turn or later (the removal took a voter or a learner out of it), so
        // its applied index covers the change.
        let applied_min = loop {
            let status = self
                .reports_of(vec![answered_by], false)
                .ok()
                .and_then(|mut r| r.pop())
                .and_then(|r| r.status);
            match status {
                Some(s) if s.voters == voters && s.learners == learners => break Some(s.applied),
                _ if Instant::now() >= deadline => break None,
                _ => std::thread::sleep(self.options.remote.status_interval.min(TRANSFER_RETRY)),
            }
        };
        let held = self.wait_held_until(&cs, applied_min, deadline);
        Ok((cs, held))
    }

    /// Asks every voter of `cs` for fresh statuses until each reports
    /// holding `cs` (its voters and learners, at an applied index of at least
    /// `applied_min`) or `held_wait` ends; reports which do ([`Held`]). After
    /// a change, `applied_min` is the applied index of the leader that
    /// answered it, from a status that shows the change applied
    /// ([`remove_held`](Self::remove_held) takes it so); `None` counts no
    /// voter as holding. A voter keeps a change it applied across restarts
    /// (it makes the change's commit durable first). Learners need not hold
    /// it, and replicas that are not voters of `cs` are not asked.
    pub fn wait_held(&self, cs: &raft::prelude::ConfState, applied_min: Option<u64>) -> Held {
        self.wait_held_until(cs, applied_min, Instant::now() + self.options.held_wait)
    }

    /// [`wait_held`](Self::wait_held) until `deadline` (plus the status
    /// round in flight then, at most `status_wait`).
    fn wait_held_until(
        &self,
        cs: &raft::prelude::ConfState,
        applied_min: Option<u64>,
        deadline: Instant,
    ) -> Held {
        let listed: BTreeSet<ReplicaId> = self.replicas().into_iter().collect();
        loop {
            let asked: Vec<ReplicaId> = cs
                .voters
                .iter()
                .copied()
                .filter(|id| listed.contains(id))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            // The voters are asked at once (at most `status_wait`).
            let reports = self.reports_of(asked, false).unwrap_or_default();
            let held = Held::from_reports(cs, applied_min, &listed, &reports);
            // A voter the directory does not list can never be shown holding.
            if held.complete()
                || applied_min.is_none()
                || !held.unlisted.is_empty()
                || Instant::now() >= deadline
            {
                return held;
            }
            std::thread::sleep(self.options.remote.status_interval.min(TRANSFER_RETRY));
        }
    }

    /// Applies one membership change through the leader, following
    /// `NotLeader` hints; a learner's promotion waits for it to catch up.
    fn change(&self, change: MembershipChange) -> Result<raft::prelude::ConfState, AdminError> {
        self.change_answered(change).map(|(cs, _)| cs)
    }

    /// [`change`](Self::change), with the replica that answered it.
    fn change_answered(
        &self,
        change: MembershipChange,
    ) -> Result<(raft::prelude::ConfState, ReplicaId), AdminError> {
        let started = Instant::now();
        let deadline = started + self.options.call_timeout;
        let mut last: Option<RequestError>;
        let mut target = None;
        loop {
            let leader = match target.take() {
                Some(id) => id,
                None => self.leader(deadline)?.0,
            };
            let node = self.node(leader)?;
            let outcome = match node.change_membership(change.clone()) {
                Err(e) => Err(e),
                Ok(slot) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    slot.wait(left).unwrap_or(Err(RequestError::TimedOut))
                }
            };
            match outcome {
                Ok(Reply::MembershipChanged(cs)) => return Ok((cs, node.id())),
                Ok(_) => return Err(AdminError::UnexpectedReply),
                // Not submitted: safe to ask again (elsewhere).
                Err(RequestError::NotLeader { leader }) => {
                    target = leader.filter(|&l| l != node.id());
                    last = Some(RequestError::NotLeader { leader });
                }
                Err(e @ (RequestError::Stopped | RequestError::Overloaded)) => last = Some(e),
                Err(e @ RequestError::NotCaughtUp { .. }) => {
                    if Instant::now() >= deadline {
                        return Err(AdminError::Refused(e));
                    }
                    target = Some(leader);
                    last = Some(e);
                }
                // The outcome is unknown: not retried (a change is not
                // idempotent); the operator checks with `status`.
                Err(
                    e @ (RequestError::TimedOut
                    | RequestError::Dropped
                    | RequestError::LeaderChanged),
                ) => {
                    return Err(AdminError::Unavailable {
                        waited: started.elapsed(),
                        last: Some(e),
                    })
                }
                Err(e) => return Err(AdminError::Refused(e)),
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Unavailable {
                    waited: started.elapsed(),
                    last,
                });
            }
            std::thread::sleep(self.options.remote.status_interval.min(TRANSFER_RETRY));
        }
    }

    /// Every listed replica's digest of its replicated state at one applied
    /// index: proposes a state digest marker through the leader (retried on
    /// another leader within `call_timeout`: an extra marker is harmless),
    /// then asks every replica for fresh statuses until each reports its
    /// digest for the marker's index or `digest_wait` ends. A replica that
    /// has not applied the marker by then, that passed it without a digest,
    /// or that does not answer is reported as such ([`DigestReport`]), never
    /// as diverged.
    pub fn compare_state(&self) -> Result<StateComparison, AdminError> {
        let (leader, marked) = self.mark_state_digest()?;
        let directory = self.client.directory();
        let mut comparison = StateComparison {
            index: marked.index,
            leader,
            replicas: self
                .replicas()
                .into_iter()
                .map(|id| ReplicaDigest {
                    id,
                    datacenter: directory
                        .peer(id)
                        .map(|p| p.datacenter.clone())
                        .unwrap_or_default(),
                    report: if id == leader {
                        DigestReport::Digest(marked.digest)
                    } else {
                        DigestReport::Unreachable
                    },
                })
                .collect(),
            groups: Vec::new(),
        };
        let deadline = Instant::now() + self.options.digest_wait;
        loop {
            let settled = |r: &ReplicaDigest| {
                matches!(
                    r.report,
                    DigestReport::Digest(_) | DigestReport::Missed { .. }
                )
            };
            if comparison.replicas.iter().all(settled) {
                break;
            }
            let reports = self.status(None)?;
            for (r, report) in comparison.replicas.iter_mut().zip(&reports) {
                debug_assert_eq!(r.id, report.id);
                if settled(r) {
                    continue;
                }
                let Some(status) = &report.status else {
                    // Keep what an earlier answer said (`Behind`).
                    continue;
                };
                let digest = status
                    .state_digests
                    .iter()
                    .find(|d| d.index == marked.index);
                r.report = match digest {
                    Some(d) => DigestReport::Digest(d.digest),
                    None if status.applied >= marked.index => DigestReport::Missed {
                        applied: status.applied,
                    },
                    None => DigestReport::Behind {
                        applied: status.applied,
                    },
                };
            }
            if Instant::now() >= deadline {
                break;
            }
            if !comparison.replicas.iter().all(settled) {
                std::thread::sleep(self.options.remote.status_interval.min(TRANSFER_RETRY));
            }
        }
        comparison.group();
        Ok(comparison)
    }

    /// Proposes a state digest marker through the leader, following
    /// `NotLeader` and retrying any retryable answer until `call_timeout`.
    fn mark_state_digest(&self) -> Result<(ReplicaId, StateDigest), AdminError> {
        let started = Instant::now();
        let deadline = started + self.options.call_timeout;
        let mut last: Option<RequestError>;
        let mut target = None;
        loop {
            let leader = match target.take() {
                Some(id) => id,
                None => self.leader(deadline)?.0,
            };
            let node = self.node(leader)?;
            let outcome = match node.mark_state_digest() {
                Err(e) => Err(e),
                Ok(slot) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    slot.wait(left).unwrap_or(Err(RequestError::TimedOut))
                }
            };
            match outcome {
                Ok(Reply::StateDigest(d)) => return Ok((leader, d)),
                Ok(_) => return Err(AdminError::UnexpectedReply),
                Err(RequestError::NotLeader { leader }) => {
                    target = leader.filter(|&l| l != node.id());
                    last = Some(RequestError::NotLeader { leader });
                }
                // A marker changes no state: whatever became of this one,
                // proposing another is safe.
                Err(
                    e @ (RequestError::Stopped
                    | RequestError::Overloaded
                    | RequestError::TimedOut
                    | RequestError::Dropped
                    | RequestError::LeaderChanged),
                ) => last = Some(e),
                Err(e) => return Err(AdminError::Refused(e)),
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Unavailable {
                    waited: started.elapsed(),
                    last,
                });
            }
            std::thread::sleep(self.options.remote.status_interval.min(TRANSFER_RETRY));
        }
    }

    /// Hands leadership to replica `to` and waits (within `call_timeout`)
    /// until `to` reports that it leads.
    pub fn transfer_leader(&self, to: ReplicaId) -> Result<(), AdminError> {
        let started = Instant::now();
        let deadline = started + self.options.call_timeout;
        let target = self.node(to)?;
        let mut last = None;
        loop {
            let (leader, status) = self.leader(deadline)?;
            if leader == to {
                return Ok(());
            }
            if !status.voters.contains(&to) {
                // raft-rs ignores a transfer to a learner or a stranger.
                return Err(AdminError::NotAVoter { id: to });
            }
            match self.node(leader)?.transfer_leader(to) {
                Ok(()) => {}
                Err(RequestError::Forbidden) => {
                    return Err(AdminError::Refused(RequestError::Forbidden))
                }
                Err(e) => last = Some(e),
            }
            // Wait for the target to lead, or a refusal to arrive.
            let retry = (Instant::now() + TRANSFER_RETRY).min(deadline);
            while Instant::now() < retry {
                if target.status().role == StateRole::Leader {
                    return Ok(());
                }
                std::thread::sleep(POLL);
            }
            if Instant::now() >= deadline {
                return Err(AdminError::Unavailable {
                    waited: started.elapsed(),
                    last,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_grouped_by_digest_largest_group_first_and_others_never_diverge() {
        let line = |id, report| ReplicaDigest {
            id,
            datacenter: format!("dc-{id}"),
            report,
        };
        let mut c = StateComparison {
            index: 9,
            leader: 1,
            replicas: vec![
                line(1, DigestReport::Digest([2; STATE_DIGEST_BYTES])),
                line(2, DigestReport::Digest([1; STATE_DIGEST_BYTES])),
                line(3, DigestReport::Digest([2; STATE_DIGEST_BYTES])),
                line(4, DigestReport::Behind { applied: 3 }),
                line(5, DigestReport::Unreachable),
            ],
            groups: Vec::new(),
        };
        c.group();
        assert!(c.diverged() && !c.complete());
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.groups[0].replicas, [1, 3]);
        assert_eq!(c.groups[1].replicas, [2]);
        assert_eq!(c.groups[1].hex(), "01".repeat(STATE_DIGEST_BYTES));
        // Replicas without a digest are not a divergence.
        c.replicas[1].report = DigestReport::Missed { applied: 12 };
        c.group();
        assert!(!c.diverged());
        assert_eq!(c.groups.len(), 1);
    }

    #[test]
    fn hex_keys_are_64_digits_and_nothing_else() {
        let text = "00".repeat(31) + "fF";
        let key = parse_key_hex(&format!("  {text}\n")).unwrap();
        assert_eq!(key[31], 0xff);
        assert_eq!(parse_key_hex("abc"), Err(HexKeyError::Length { found: 3 }));
        let bad = "0".repeat(63) + "g";
        assert_eq!(parse_key_hex(&bad), Err(HexKeyError::Digit { at: 63 }));
        // Multi-byte characters never panic.
        let wide = "é".repeat(32);
        assert!(parse_key_hex(&wide).is_err());
    }

    #[test]
    fn the_config_refuses_unknown_fields_and_defaults_the_group() {
        let key = "11".repeat(32);
        let text = format!(
            "fleet_id = \"f\"\nkey_file = \"k\"\n[[peer]]\nid = 1\naddress = \"127.0.0.1:1\"\n\
             datacenter = \"dc-a\"\ntransport_key = \"{key}\"\n"
        );
        let config = AdminConfig::parse(&text).unwrap();
        assert_eq!(config.group, 1);
        assert_eq!(config.peers.len(), 1);
        config.validate().unwrap();
        assert!(AdminConfig::parse(&format!("{text}pin = 1\n")).is_err());
        let mut twice = config.clone();
        twice.peers.push(twice.peers[0].clone());
        assert!(matches!(
            twice.validate(),
            Err(AdminConfigError::DuplicatePeer { id: 1 })
        ));
        let mut bad = config;
        bad.peers[0].transport_key = "zz".into();
        assert!(matches!(
            bad.validate(),
            Err(AdminConfigError::PeerKey { id: 1, .. })
        ));
    }
}
