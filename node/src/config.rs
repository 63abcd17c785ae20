//! The node's configuration file (TOML): every field documented, unknown
//! fields refused, relative paths taken against the config file's folder.
//!
//! [`NodeConfig::load`] reads, parses and validates a file; every refusal is a
//! typed [`ConfigError`] that says what to fix (a TOML syntax or type error
//! keeps `toml`'s own error, with its line and column, as the source). The
//! [`PeerConfig`] table is shared with the admin config. A commented example
//! of every field is `docs/node.toml.example`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::{FleetConfig, MemberSpec};
use vaultfleet_audit::{CosignerKey, CosignerPinError, FleetVerifier, WitnessKey};
use vaultfleet_tlog::{BaseUrl, HttpError};

use crate::logging::LogFormat;

/// One replica of the fleet as a `[[peer]]` table: where it listens for peers
/// and clients, its datacenter, and its pinned X25519 transport key.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The replica's id (unique in the fleet, never reused).
    pub id: u64,
    /// Its peer/client listen address (`ip:port`).
    pub address: SocketAddr,
    /// The datacenter it runs in.
    pub datacenter: String,
    /// Its static X25519 transport public key: 64 hex digits, as
    /// `vaultfleet node init` prints it.
    pub transport_key: String,
    /// A learner of the bootstrap configuration rather than a voter.
    #[serde(default)]
    pub learner: bool,
}

/// A node's whole configuration (`vaultfleet node run --config node.toml`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The fleet's id: bound into every handshake and every sealed transport
    /// key; the same on every node of the fleet (1 to 255 bytes).
    pub fleet_id: String,
    /// The raft group the replica belongs to (default 1).
    #[serde(default = "default_group")]
    pub group: u64,
    /// This node's replica id: non-zero, listed among the `[[peer]]` tables,
    /// never reused for another data directory.
    pub replica_id: u64,
    /// The datacenter this node runs in; must equal its `[[peer]]` entry's.
    pub datacenter: String,
    /// The folder of the replica's sealed log (created on first start). It
    /// holds the replica's identity: a node refuses a folder written for
    /// another replica, group or fleet.
    pub data_dir: PathBuf,
    /// The addresses this node listens on.
    pub listen: ListenConfig,
    /// The node's HSM: it seals the log and the transport key and holds the
    /// vault's keys.
    pub hsm: HsmConfig,
    /// The node's X25519 transport key, sealed under the HSM
    /// (`vaultfleet node init` writes it).
    pub transport_key: PathBuf,
    /// What the vault service needs: its keys' sealed setup and the evidence
    /// it serves.
    pub vault: VaultConfig,
    /// Raft timing; the defaults suit round trips between datacenters.
    #[serde(default)]
    pub timing: TimingConfig,
    /// Every replica of the fleet, this one included (`[[peer]]` tables).
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
    /// The operators' admin keys allowed to run `vaultfleet admin` calls
    /// (`[[admin_key]]` tables; none: no admin calls).
    #[serde(rename = "admin_key", default)]
    pub admin_keys: Vec<AdminKeyConfig>,
    /// How the daemon logs (the filter comes from `RUST_LOG`).
    #[serde(default)]
    pub log: LogConfig,
    /// This replica joins a running fleet (after `vaultfleet admin
    /// add-learner`): it starts from an empty log and receives the state from
    /// the leader. False (the default): it is one of the fleet's initial
    /// members and writes the `[[peer]]` membership into a fresh data
    /// directory.
    #[serde(default)]
    pub join: bool,
    /// What drives the replica: `"pool"` (the default: the engine's
    /// `runtime::Pool`, one worker and a timer thread, no wake-up per
    /// message while the worker is busy) or `"threads"` (the engine's
    /// `runtime::Node`, a thread of the replica's own). Both run the same
    /// turns; everything else the node does is the same on either. Any other
    /// value is refused, naming the field and the values accepted.
    #[serde(default)]
    pub runtime: Runtime,
    /// Streamed snapshots: `true` opens the store's snapshot files (sealed
    /// like the log) before the replica starts, so its snapshots are written
    /// to a file and sent to a follower in chunks over the transport instead
    /// of inside one raft message. `false` (the default): snapshots inline.
    /// Turn it on only once every node of the fleet runs a build that
    /// streams (an older peer closes the connection on a streamed
    /// snapshot's frames, `docs/operations.md`). A reload refuses a change:
    /// it takes a restart. Any value but `true` or `false` is refused,
    /// naming the field and the values accepted.
    #[serde(default, deserialize_with = "streamed_snapshots")]
    pub streamed_snapshots: bool,
}

/// Reads `streamed_snapshots`: a TOML boolean and nothing else (not `"yes"`,
/// not `1`), with an error that names the values accepted.
fn streamed_snapshots<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::Boolean(b) => Ok(b),
        other => Err(serde::de::Error::custom(format!(
            "streamed_snapshots = {} is not a boolean: use true or false (the default; \
             turn it on only once every node runs a build that streams snapshots)",
            shorten(&other.to_string())
        ))),
    }
}

/// At most 64 characters of a value echoed in an error.
fn shorten(value: &str) -> String {
    value.chars().take(64).collect()
}

fn default_group() -> u64 {
    1
}

/// The node's `runtime` setting: what drives its replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
#[non_exhaustive]
pub enum Runtime {
    /// `"pool"` (the default): the engine's `runtime::Pool`.
    #[default]
    Pool,
    /// `"threads"`: the engine's `runtime::Node`, a thread per replica.
    Threads,
}

impl Runtime {
    /// The setting's value in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Pool => "pool",
            Runtime::Threads => "threads",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A `runtime` value that is not one: the parse error of the config file
/// carries it (with the line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runtime = {value:?} is not a runtime: use \"pool\" (the default) or \"threads\"")]
pub struct UnknownRuntime {
    /// The value given (at most 64 characters of it).
    pub value: String,
}

impl std::str::FromStr for Runtime {
    type Err = UnknownRuntime;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pool" => Ok(Runtime::Pool),
            "threads" => Ok(Runtime::Threads),
            other => Err(UnknownRuntime {
                value: other.chars().take(64).collect(),
            }),
        }
    }
}

impl TryFrom<String> for Runtime {
    type Error = UnknownRuntime;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The `[listen]` table.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenConfig {
    /// Peer and client (Noise IK) listen address: replicas, vault services of
    /// other nodes, admin calls. Its `[[peer]]` entry's `address` is where the
    /// others dial it.
    pub peer: SocketAddr,
    /// The vault service's listen address (the open channel user devices
    /// reach).
    pub vault: SocketAddr,
    /// The Prometheus endpoint (`/metrics`, `/healthz`, `/readyz`); none when
    /// absent. Keep it on loopback unless a scraper elsewhere needs it.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

/// The `[hsm]` table, by `kind`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum HsmConfig {
    /// `kind = "soft"`: a soft HSM kept in a file. For trying vaultfleet out:
    /// it protects nothing against the host it runs on.
    Soft {
        /// The soft HSM's file.
        file: PathBuf,
    },
    /// `kind = "pkcs11"`: a PKCS#11 token. The user PIN comes from exactly one
    /// of `pin_file` and `pin_env`, never from the config itself.
    Pkcs11 {
        /// The vendor's PKCS#11 module (SoftHSM2 on Debian:
        /// `/usr/lib/softhsm/libsofthsm2.so`).
        module: PathBuf,
        /// The token's label.
        token_label: String,
        /// A file holding the user PIN (a trailing newline is ignored); it
        /// must not be readable by group or others (`chmod 600`).
        #[serde(default)]
        pin_file: Option<PathBuf>,
        /// An environment variable holding the user PIN.
        #[serde(default)]
        pin_env: Option<String>,
    },
}

/// The `[vault]` table.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VaultConfig {
    /// The OPAQUE server setup sealed under the fleet's HSM security world
    /// (written at the key ceremony).
    pub opaque_setup: PathBuf,
    /// The fleet's deployment evidence: its validation bundle is served in
    /// every reply.
    pub evidence: PathBuf,
    /// The witness's log file (`witness.state`): the log tree the bundle's
    /// checkpoint covers is rebuilt from it. Exactly one of this and
    /// `witness_log_url`.
    #[serde(default)]
    pub witness_log: Option<PathBuf>,
    /// The witness's log as `vaultfleet witness serve` publishes it (C2SP
    /// tlog-tiles), `http://HOST:PORT[/PREFIX]`: the node fetches the
    /// namespace's log at every start and reload, checks that its checkpoint
    /// is signed by a `[[vault.witness_key]]` and that its entries hash to
    /// that checkpoint, and serves proofs from it. Exactly one of this and
    /// `witness_log`.
    #[serde(default)]
    pub witness_log_url: Option<String>,
    /// The witness log's namespace of this fleet's artifacts.
    pub namespace: String,
    /// The operator's Ed25519 countersigning public key (64 hex digits): the
    /// bundle's countersignature must verify under it.
    pub operator_key: String,
    /// The witness's Ed25519 public keys (`[[vault.witness_key]]` tables, at
    /// least one): the bundle's statement and checkpoint must be signed by
    /// one of them, within its validity window.
    #[serde(rename = "witness_key", default)]
    pub witness_keys: Vec<WitnessKeyConfig>,
    /// How many of the `[[vault.cosigner]]` keys must have cosigned the
    /// bundle's checkpoint (default 0: no cosignature needed, and then no
    /// `[[vault.cosigner]]` table may be listed).
    #[serde(default)]
    pub cosigners_required: usize,
    /// Independent witnesses (C2SP tlog-witness cosigners) whose
    /// `cosignature/v1` lines on the bundle's checkpoint count toward
    /// `cosigners_required` (`[[vault.cosigner]]` tables).
    #[serde(rename = "cosigner", default)]
    pub cosigners: Vec<CosignerConfig>,
}

/// Where a node reads the witness's log: `[vault] witness_log` or
/// `[vault] witness_log_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WitnessLogSource {
    /// The witness's log file (`witness.state`).
    File(PathBuf),
    /// The served log (C2SP tlog-tiles over HTTP).
    Url {
        /// The URL as the config gives it.
        url: String,
        /// The URL, parsed.
        base: BaseUrl,
    },
}

/// A `[[vault.cosigner]]` table: an independent witness whose cosignature on
/// the bundle's checkpoint the node counts.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CosignerConfig {
    /// The cosigner's key name, as its signature lines carry it (C2SP
    /// recommends a schema-less URL, e.g. `witness.example.com/w1`).
    pub name: String,
    /// Its Ed25519 public key: 64 hex digits.
    pub public_key: String,
}

/// A `[[vault.witness_key]]` table: a witness key the node trusts.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WitnessKeyConfig {
    /// The key's name, as the witness signs with it.
    pub name: String,
    /// Its Ed25519 public key: 64 hex digits.
    pub public_key: String,
    /// When it may start signing, Unix seconds (default 0). A key retires
    /// when the next pinned key's `not_before` arrives.
    #[serde(default)]
    pub not_before: u64,
}

/// The `[timing]` table: one tick, and the election timeout and heartbeat
/// interval counted in ticks.
///
/// The rule: the election timeout (`election_ticks * tick_ms`) must be well
/// above the worst round trip between datacenters (five times or more), or
/// followers campaign while a healthy leader's heartbeats are in flight; and
/// a leader heartbeats a few times per election timeout
/// (`election_ticks >= 2 * heartbeat_ticks`, 4-5 times is typical). The
/// defaults (100 ms ticks, heartbeats every 3 ticks, elections after 15-30
/// ticks) suit inter-datacenter round trips of up to about 300 ms; lower
/// `tick_ms` within one region.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TimingConfig {
    /// One tick, in milliseconds (1 to 10,000; default 100).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Ticks between a leader's heartbeats (default 3).
    #[serde(default = "default_heartbeat_ticks")]
    pub heartbeat_ticks: usize,
    /// Ticks a follower waits for a leader before campaigning; the actual
    /// timeout is drawn from `[election_ticks, 2 * election_ticks)` (default 15).
    #[serde(default = "default_election_ticks")]
    pub election_ticks: usize,
}

fn default_tick_ms() -> u64 {
    100
}
fn default_heartbeat_ticks() -> usize {
    3
}
fn default_election_ticks() -> usize {
    15
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            tick_ms: default_tick_ms(),
            heartbeat_ticks: default_heartbeat_ticks(),
            election_ticks: default_election_ticks(),
        }
    }
}

/// The longest tick accepted.
pub const TICK_MS_MAX: u64 = 10_000;
/// The longest election timeout accepted (`election_ticks * tick_ms`).
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(120);
/// The most `[[peer]]` tables.
pub const PEERS_MAX: usize = vaultfleet::config::MEMBERS_MAX;
/// The most `[[admin_key]]` tables.
pub const ADMIN_KEYS_MAX: usize = 64;
/// The most `[[vault.witness_key]]` tables.
pub const WITNESS_KEYS_MAX: usize = 16;
/// The most `[[vault.cosigner]]` tables.
pub const COSIGNERS_MAX: usize = vaultfleet_audit::bundle::COSIGNERS_MAX;
/// The largest config file read.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;

impl TimingConfig {
    /// One tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// The shortest election timeout (`election_ticks` ticks).
    pub fn election_timeout(&self) -> Duration {
        self.tick()
            .saturating_mul(u32::try_from(self.election_ticks).unwrap_or(u32::MAX))
    }

    fn validate(&self) -> Result<(), Invalid> {
        let bad = |reason: &'static str| Invalid::Timing { reason };
        if self.tick_ms == 0 || self.tick_ms > TICK_MS_MAX {
            return Err(bad("tick_ms must be 1 to 10000"));
        }
        if self.heartbeat_ticks == 0 {
            return Err(bad("heartbeat_ticks must be at least 1"));
        }
        if self.election_ticks < self.heartbeat_ticks.saturating_mul(2) {
            return Err(bad(
                "election_ticks must be at least twice heartbeat_ticks (a leader heartbeats a few times per election timeout)",
            ));
        }
        if self.election_timeout() > ELECTION_TIMEOUT_MAX {
            return Err(bad("election_ticks * tick_ms must be at most 120 seconds"));
        }
        Ok(())
    }
}

/// An `[[admin_key]]` table: an operator allowed to make admin calls.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminKeyConfig {
    /// A name for the key (who holds it), for the operator's records.
    pub name: String,
    /// The admin's X25519 public key: 64 hex digits.
    pub public_key: String,
}

/// The `[log]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LogConfig {
    /// `"text"` (default) or `"json"` (one object a line). The filter is
    /// `RUST_LOG` (default `info`).
    #[serde(default)]
    pub format: LogFormat,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a regular file, or is larger than [`CONFIG_BYTES_MAX`].
    #[error("the config file {} is not a regular file of at most {CONFIG_BYTES_MAX} bytes", path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// The file was refused before it was read: another user's, or in a
    /// folder others can write (a FIFO or folder is [`ConfigError::NotAFile`]).
    #[error("the config file {} is refused", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::files::FileRefusal,
    },
    /// Group or others may write the file: it is a trust root (the admin
    /// keys, the peers' and the witness's pinned keys), so it is refused.
    #[error("the config file {} is writable by group or others (mode {mode:o}): it holds the fleet's trusted keys; chmod go-w it", path.display())]
    Writable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a node config: TOML syntax, a wrong type, a missing or
    /// unknown field (the source names it, with its line and column).
    #[error("the config file {} is not a valid node config", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// `toml`'s error, with its line and column.
        #[source]
        source: ParseError,
    },
    /// The file parses, but its settings do not work together.
    #[error("the config file {} has a setting to fix", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Invalid,
    },
}

/// `toml`'s error where it happened. Its message names the field (a missing
/// one, an unknown one such as a `pin`); unlike `toml`'s own display, it does
/// not quote the offending line, which could hold a secret put where it does
/// not belong.
#[derive(Debug)]
pub struct ParseError {
    line: usize,
    column: usize,
    toml: Box<toml::de::Error>,
}

impl ParseError {
    fn new(text: &str, toml: toml::de::Error) -> Self {
        let (line, column) = toml.span().map_or((0, 0), |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (line, column)
        });
        Self {
            line,
            column,
            toml: Box::new(toml),
        }
    }

    /// The line (1-based; 0 when `toml` gave no position).
    pub fn line(&self) -> usize {
        self.line
    }

    /// The column (1-based; 0 when `toml` gave no position).
    pub fn column(&self) -> usize {
        self.column
    }

    /// `toml`'s error itself.
    pub fn toml(&self) -> &toml::de::Error {
        &self.toml
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = self.toml.message().trim_end();
        if self.line == 0 {
            write!(f, "{message}")
        } else {
            write!(f, "line {}, column {}: {message}", self.line, self.column)
        }
    }
}

impl std::error::Error for ParseError {}

/// A setting that does not work, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// `fleet_id` is empty or too long.
    #[error("fleet_id must be 1 to 255 bytes")]
    FleetId,
    /// A zero id or group.
    #[error("{field} must not be 0")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// An empty text field.
    #[error("{field} must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// This replica has no `[[peer]]` table.
    #[error("replica_id {id} has no [[peer]] table: list every replica, this one included")]
    NotAPeer {
        /// The replica.
        id: u64,
    },
    /// This replica's `[[peer]]` table names another datacenter.
    #[error("replica {id} is in datacenter {config:?} but its [[peer]] table says {peer:?}: make them equal")]
    DatacenterMismatch {
        /// The replica.
        id: u64,
        /// `datacenter`.
        config: String,
        /// The `[[peer]]` table's.
        peer: String,
    },
    /// Two `[[peer]]` tables share an id.
    #[error("two [[peer]] tables have id {id}: ids are unique")]
    DuplicatePeer {
        /// The id.
        id: u64,
    },
    /// Two tables share a key.
    #[error("{first} and {second} have the same key: every node and every admin has its own")]
    DuplicateKey {
        /// The first holder.
        first: String,
        /// The second.
        second: String,
    },
    /// Too many tables.
    #[error("{count} [[{table}]] tables, at most {max}")]
    TooMany {
        /// The table.
        table: &'static str,
        /// How many.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A key that is not 64 hex digits.
    #[error("{owner}: {source}")]
    Key {
        /// Whose key (`[[peer]] 3`, `[[admin_key]] alice`).
        owner: String,
        /// What is wrong with it.
        #[source]
        source: crate::hsm::KeyHexError,
    },
    /// A PKCS#11 HSM with neither or both PIN sources.
    #[error("[hsm] kind = \"pkcs11\" needs exactly one of pin_file and pin_env (the PIN is never in the config itself)")]
    PinSource,
    /// The timing does not work.
    #[error("[timing]: {reason}")]
    Timing {
        /// The rule broken.
        reason: &'static str,
    },
    /// The peers do not make a fleet.
    #[error("the [[peer]] tables do not make a fleet")]
    Fleet(#[source] vaultfleet::ConfigError),
    /// `[vault]` gives both `witness_log` and `witness_log_url`.
    #[error("[vault] gives both witness_log and witness_log_url: keep exactly one (the witness's log file, or the URL where the witness serves it)")]
    WitnessLogBoth,
    /// `[vault]` gives neither `witness_log` nor `witness_log_url`.
    #[error("[vault] needs exactly one of witness_log (the witness's log file) and witness_log_url (where the witness serves it, http://HOST:PORT)")]
    NoWitnessLog,
    /// `[vault] witness_log_url` is not `http://HOST:PORT[/PREFIX]`.
    #[error("[vault] witness_log_url {url:?} is not a served log's URL")]
    WitnessLogUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        #[source]
        source: HttpError,
    },
    /// No `[[vault.witness_key]]` table: the bundle could not be verified.
    #[error("[vault] needs at least one [[vault.witness_key]] table (the witness's public key the bundle is verified against)")]
    NoWitnessKey,
    /// Two `[[vault.witness_key]]` tables share a name.
    #[error("two [[vault.witness_key]] tables are named {name:?}: names are unique")]
    DuplicateWitnessKey {
        /// The name.
        name: String,
    },
    /// Two `[[vault.cosigner]]` tables share a name.
    #[error("two [[vault.cosigner]] tables are named {name:?}: names are unique")]
    DuplicateCosigner {
        /// The name.
        name: String,
    },
    /// `cosigners_required` is more than the `[[vault.cosigner]]` tables.
    #[error("[vault] cosigners_required = {required}, but only {count} [[vault.cosigner]] tables are listed")]
    CosignersRequired {
        /// `cosigners_required`.
        required: usize,
        /// The tables.
        count: usize,
    },
    /// `[[vault.cosigner]]` tables with `cosigners_required = 0`: they would
    /// be ignored.
    #[error("{count} [[vault.cosigner]] tables, but [vault] cosigners_required is 0: set how many must cosign, or remove the tables")]
    CosignersUnused {
        /// The tables.
        count: usize,
    },
    /// The cosigners cannot be pinned (a name that cannot sign notes, a key
    /// shared by two cosigners or with a witness key).
    #[error("the [[vault.cosigner]] tables cannot be pinned")]
    Cosigners(#[source] CosignerPinError),
}

impl NodeConfig {
    /// Reads, parses and validates the config file at `path`; relative paths
    /// in it are taken against `path`'s folder.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = read_config_file(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            FromTomlError::Parse(source) => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            FromTomlError::Invalid(source) => ConfigError::Invalid {
                path: path.to_path_buf(),
                source,
            },
        })
    }

    /// Reads and parses the config file at `path` and checks only what
    /// `vaultfleet node init` needs (the ids, the HSM's PIN source): the
    /// `[[peer]]` tables may still lack this node's transport key, which init
    /// prints. Relative paths are taken against `path`'s folder.
    pub fn load_for_init(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = read_config_file(path)?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: ParseError::new(&text, e),
        })?;
        config
            .validate_identity()
            .map_err(|source| ConfigError::Invalid {
                path: path.to_path_buf(),
                source,
            })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Parses and validates `text`, taking relative paths against `base`.
    fn from_toml(text: &str, base: &Path) -> Result<NodeConfig, FromTomlError> {
        let mut config: NodeConfig =
            toml::from_str(text).map_err(|e| FromTomlError::Parse(ParseError::new(text, e)))?;
        config.validate().map_err(FromTomlError::Invalid)?;
        config.resolve_paths(base);
        Ok(config)
    }

    /// The fleet id, the replica id, the group and the PIN source.
    fn validate_identity(&self) -> Result<(), Invalid> {
        if self.fleet_id.is_empty()
            || self.fleet_id.len() > vaultfleet_net::directory::FLEET_ID_BYTES_MAX
        {
            return Err(Invalid::FleetId);
        }
        if self.replica_id == 0 {
            return Err(Invalid::Zero {
                field: "replica_id",
            });
        }
        if self.group == 0 {
            return Err(Invalid::Zero { field: "group" });
        }
        if let HsmConfig::Pkcs11 {
            pin_file, pin_env, ..
        } = &self.hsm
        {
            if pin_file.is_some() == pin_env.is_some() {
                return Err(Invalid::PinSource);
            }
        }
        Ok(())
    }

    /// Checks that the settings work together.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_identity()?;
        if self.datacenter.is_empty() {
            return Err(Invalid::Empty {
                field: "datacenter",
            });
        }
        if self.vault.namespace.is_empty() {
            return Err(Invalid::Empty {
                field: "vault.namespace",
            });
        }
        if self.peers.len() > PEERS_MAX {
            return Err(Invalid::TooMany {
                table: "peer",
                count: self.peers.len(),
                max: PEERS_MAX,
            });
        }
        if self.admin_keys.len() > ADMIN_KEYS_MAX {
            return Err(Invalid::TooMany {
                table: "admin_key",
                count: self.admin_keys.len(),
                max: ADMIN_KEYS_MAX,
            });
        }
        self.timing.validate()?;
        self.witness_log_source()?;
        let mut ids = BTreeSet::new();
        let mut keys: Vec<([u8; 32], String)> = Vec::new();
        let mut check_key = |owner: String, hex: &str| -> Result<(), Invalid> {
            let key = crate::hsm::parse_public_key(hex).map_err(|source| Invalid::Key {
                owner: owner.clone(),
                source,
            })?;
            if let Some((_, first)) = keys.iter().find(|(k, _)| k == key.as_bytes()) {
                return Err(Invalid::DuplicateKey {
                    first: first.clone(),
                    second: owner,
                });
            }
            keys.push((*key.as_bytes(), owner));
            Ok(())
        };
        for p in &self.peers {
            if p.id == 0 {
                return Err(Invalid::Zero {
                    field: "[[peer]] id",
                });
            }
            if !ids.insert(p.id) {
                return Err(Invalid::DuplicatePeer { id: p.id });
            }
            check_key(format!("[[peer]] {}", p.id), &p.transport_key)?;
        }
        for a in &self.admin_keys {
            check_key(format!("[[admin_key]] {:?}", a.name), &a.public_key)?;
        }
        self.fleet_verifier()?;
        let own = self
            .peers
            .iter()
            .find(|p| p.id == self.replica_id)
            .ok_or(Invalid::NotAPeer {
                id: self.replica_id,
            })?;
        if own.datacenter != self.datacenter {
            return Err(Invalid::DatacenterMismatch {
                id: self.replica_id,
                config: self.datacenter.clone(),
                peer: own.datacenter.clone(),
            });
        }
        self.fleet_config().validate().map_err(Invalid::Fleet)?;
        Ok(())
    }

    /// Where the witness's log is read: exactly one of `[vault] witness_log`
    /// and `[vault] witness_log_url`, the URL `http://HOST:PORT[/PREFIX]`.
    pub fn witness_log_source(&self) -> Result<WitnessLogSource, Invalid> {
        match (&self.vault.witness_log, &self.vault.witness_log_url) {
            (Some(_), Some(_)) => Err(Invalid::WitnessLogBoth),
            (None, None) => Err(Invalid::NoWitnessLog),
            (Some(path), None) => Ok(WitnessLogSource::File(path.clone())),
            (None, Some(url)) => {
                let base = BaseUrl::parse(url).map_err(|source| Invalid::WitnessLogUrl {
                    url: url.clone(),
                    source,
                })?;
                Ok(WitnessLogSource::Url {
                    url: url.clone(),
                    base,
                })
            }
        }
    }

    /// The pinned witness keys and the operator's key, checked: at most
    /// [`WITNESS_KEYS_MAX`] witness keys, at least one, uniquely named, and
    /// every key 64 hex digits.
    pub(crate) fn witness_verifier_keys(&self) -> Result<(Vec<WitnessKey>, [u8; 32]), Invalid> {
        let v = &self.vault;
        if v.witness_keys.is_empty() {
            return Err(Invalid::NoWitnessKey);
        }
        if v.witness_keys.len() > WITNESS_KEYS_MAX {
            return Err(Invalid::TooMany {
                table: "vault.witness_key",
                count: v.witness_keys.len(),
                max: WITNESS_KEYS_MAX,
            });
        }
        let operator_key =
            crate::hsm::parse_key_hex(&v.operator_key).map_err(|source| Invalid::Key {
                owner: "[vault] operator_key".into(),
                source,
            })?;
        let mut names = BTreeSet::new();
        let mut keys = Vec::with_capacity(v.witness_keys.len());
        for w in &v.witness_keys {
            if w.name.is_empty() {
                return Err(Invalid::Empty {
                    field: "[[vault.witness_key]] name",
                });
            }
            if !names.insert(w.name.as_str()) {
                return Err(Invalid::DuplicateWitnessKey {
                    name: w.name.clone(),
                });
            }
            let public_key =
                crate::hsm::parse_key_hex(&w.public_key).map_err(|source| Invalid::Key {
                    owner: format!("[[vault.witness_key]] {:?}", w.name),
                    source,
                })?;
            keys.push(WitnessKey {
                name: w.name.clone(),
                public_key,
                not_before: w.not_before,
            });
        }
        Ok((keys, operator_key))
    }

    /// The pinned cosigners, checked: at most [`COSIGNERS_MAX`], uniquely
    /// named, every key 64 hex digits, and `cosigners_required` 1 to their
    /// number (or 0 with none listed).
    fn cosigner_keys(&self) -> Result<Vec<CosignerKey>, Invalid> {
        let v = &self.vault;
        if v.cosigners.len() > COSIGNERS_MAX {
            return Err(Invalid::TooMany {
                table: "vault.cosigner",
                count: v.cosigners.len(),
                max: COSIGNERS_MAX,
            });
        }
        if v.cosigners_required > v.cosigners.len() {
            return Err(Invalid::CosignersRequired {
                required: v.cosigners_required,
                count: v.cosigners.len(),
            });
        }
        if v.cosigners_required == 0 && !v.cosigners.is_empty() {
            return Err(Invalid::CosignersUnused {
                count: v.cosigners.len(),
            });
        }
        let mut names = BTreeSet::new();
        let mut keys = Vec::with_capacity(v.cosigners.len());
        for c in &v.cosigners {
            if c.name.is_empty() {
                return Err(Invalid::Empty {
                    field: "[[vault.cosigner]] name",
                });
            }
            if !names.insert(c.name.as_str()) {
                return Err(Invalid::DuplicateCosigner {
                    name: c.name.clone(),
                });
            }
            let public_key =
                crate::hsm::parse_key_hex(&c.public_key).map_err(|source| Invalid::Key {
                    owner: format!("[[vault.cosigner]] {:?}", c.name),
                    source,
                })?;
            keys.push(CosignerKey {
                name: c.name.clone(),
                public_key,
            });
        }
        Ok(keys)
    }

    /// The check of the fleet's validation bundle this node trusts: the
    /// pinned witness keys and operator key, for `[vault] namespace`, and
    /// `cosigners_required` of the pinned cosigners.
    pub fn fleet_verifier(&self) -> Result<FleetVerifier, Invalid> {
        let (witness_keys, operator_key) = self.witness_verifier_keys()?;
        let cosigners = self.cosigner_keys()?;
        let verifier = FleetVerifier::new(&self.vault.namespace, witness_keys, operator_key);
        if self.vault.cosigners_required == 0 {
            return Ok(verifier);
        }
        verifier
            .require_cosigners(self.vault.cosigners_required, cosigners)
            .map_err(Invalid::Cosigners)
    }

    /// Takes every relative path against `base`.
    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.data_dir);
        resolve(&mut self.transport_key);
        resolve(&mut self.vault.opaque_setup);
        resolve(&mut self.vault.evidence);
        if let Some(log) = &mut self.vault.witness_log {
            resolve(log);
        }
        match &mut self.hsm {
            HsmConfig::Soft { file } => resolve(file),
            HsmConfig::Pkcs11 {
                module, pin_file, ..
            } => {
                resolve(module);
                if let Some(f) = pin_file {
                    resolve(f);
                }
            }
        }
    }

    /// The bootstrap membership the `[[peer]]` tables describe.
    pub fn fleet_config(&self) -> FleetConfig {
        FleetConfig::new(
            self.peers
                .iter()
                .map(|p| {
                    if p.learner {
                        MemberSpec::learner(p.id, p.datacenter.clone())
                    } else {
                        MemberSpec::voter(p.id, p.datacenter.clone())
                    }
                })
                .collect(),
        )
    }

    /// The replica's engine settings: this id and group, the timing.
    pub fn replica_config(&self) -> ReplicaConfig {
        let mut c = ReplicaConfig::new(self.replica_id);
        c.group = self.group;
        c.heartbeat_ticks = self.timing.heartbeat_ticks;
        c.election_ticks = self.timing.election_ticks;
        c
    }

    /// The runtime node's settings: the replica's, ticking every
    /// `timing.tick_ms`.
    pub fn node_config(&self) -> vaultfleet::runtime::NodeConfig {
        let mut c = vaultfleet::runtime::NodeConfig::new(self.replica_config());
        c.tick_interval = self.timing.tick();
        c
    }
}

/// Reads a config file: opened once, checked on the open file (a regular
/// file, at most [`CONFIG_BYTES_MAX`] bytes, not writable by group or
/// others), read through a bounded reader.
fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let read = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let refused = |source| ConfigError::Refused {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::files::open_regular(path).map_err(|e| match e {
        crate::files::FileRefusal::Io(source) => read(source),
        crate::files::FileRefusal::NotRegular => ConfigError::NotAFile {
            path: path.to_path_buf(),
        },
        other => refused(other),
    })?;
    crate::files::check_owner_and_folder(&file, path).map_err(refused)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() || meta.len() > CONFIG_BYTES_MAX {
        return Err(ConfigError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(ConfigError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.take(CONFIG_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > CONFIG_BYTES_MAX {
        return Err(ConfigError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|_| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the config file is not UTF-8",
        ))
    })
}

enum FromTomlError {
    Parse(ParseError),
    Invalid(Invalid),
}
