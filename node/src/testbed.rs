//! A whole local fleet on one machine, generated into a folder: for trying the
//! daemon out (`vaultfleet node testbed`) and for the multi-process tests.
//!
//! [`generate`] writes, under the folder it is given:
//!
//! - `world.hsm`: the fleet's security world, a soft HSM file holding the
//!   vault's keys (the OPAQUE setup key, the record key, each replica's
//!   response key), and `opaque-setup.sealed`, the OPAQUE server setup sealed
//!   under it. Each node gets its own copy of the world (`node-N/hsm.soft`):
//!   a soft HSM keeps its monotonic counters in its file, and two processes
//!   must never share one.
//! - `node-N/transport.key`: node N's X25519 transport key, sealed under its
//!   HSM copy ([`crate::hsm::create_transport_key`]).
//! - `witness/`: a local witness (its soft HSM and its log, `witness.state`)
//!   that has logged and signed epoch 1 of the fleet's artifact;
//!   `operator.hsm`: the operator's countersigning key.
//! - `node-N/evidence.bin`: the epoch's validation bundle inside deployment
//!   evidence. A testbed has no device attestations and no ceremony record
//!   (they need a vendor and officers); the bundle, which is what a node
//!   serves and a client checks, is complete.
//! - `node-N/node.toml`: each node's config; `admin.toml` and `admin.key`:
//!   an operator's admin key, pinned in every node's config.
//! - `client.toml`: what a user's device pins (the witness's and the
//!   operator's keys) and where the vault listeners are ([`ClientFile`]).
//!
//! Every node listens on its own loopback address `127.A.B.N` (N the replica
//! id), so a test picks a fresh `A.B` and needs no free-port search. All of it
//! is for a machine's loopback: soft HSMs hold their keys in files.
// A generator of test and demo fleets reads the wall clock for validity times.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::evidence::{Ceremony, Evidence};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{Bundle, CosignerKey, FleetVerifier, Witness, WitnessKey, WitnessKeySpec};
use vaultfleet_net::open::OpenClientConfig;
use vaultfleet_net::{PublicKey, StaticSecret};
use vaultfleet_vault::{
    BundleTrust, RemoteVaultEndpoint, ServerTrust, VaultClient, VaultClientConfig, VaultEndpoint,
    VaultKeys,
};

use crate::hsm::hex;

/// The raft group of a testbed fleet.
pub const TESTBED_GROUP: u64 = 1;
/// The witness key's name in a testbed.
const WITNESS_KEY: &str = "witness-1";
/// The operator's countersigning key label in `operator.hsm`.
const OPERATOR_KEY: &str = "operator/countersign";
/// The port each node's peer/client listener uses on its loopback address.
pub const PEER_PORT: u16 = 7100;
/// The port of each node's vault listener.
pub const VAULT_PORT: u16 = 7200;
/// The port of each node's metrics endpoint.
pub const METRICS_PORT: u16 = 7300;

/// What fleet to generate.
#[derive(Clone, Debug)]
pub struct TestbedSpec {
    /// The folder to write into (created; must be empty or absent).
    pub dir: PathBuf,
    /// The fleet's id.
    pub fleet_id: String,
    /// The witness log's namespace.
    pub namespace: String,
    /// The replicas: id (1..=254, the last octet of its address) and datacenter.
    pub replicas: Vec<(u64, String)>,
    /// The middle octets `A.B` of every node's address `127.A.B.N`.
    pub loopback: [u8; 2],
    /// The artifact's validity start, Unix seconds (the witness signs then).
    pub now: u64,
    /// Logs as JSON lines rather than text.
    pub json_logs: bool,
}

/// One generated node.
#[derive(Clone, Debug)]
pub struct TestbedNode {
    /// Its replica id.
    pub id: u64,
    /// Its datacenter.
    pub datacenter: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its peer/client listen address.
    pub peer: SocketAddr,
    /// Its vault listen address.
    pub vault: SocketAddr,
    /// Its metrics address.
    pub metrics: SocketAddr,
    /// Its transport public key.
    pub transport_key: PublicKey,
    /// Its vault response-signing public key.
    pub response_key: [u8; 32],
    /// The fleet's OPAQUE public key as its keys give it.
    pub opaque_key: [u8; 32],
    /// Whether it joins a running fleet (added by a membership change) rather
    /// than bootstrapping with the first epoch's members.
    pub joins: bool,
}

/// A generated fleet.
#[derive(Debug)]
pub struct Testbed {
    /// The folder it lives in.
    pub dir: PathBuf,
    /// The fleet's id.
    pub fleet_id: String,
    /// The raft group.
    pub group: u64,
    /// The nodes, in the spec's order.
    pub nodes: Vec<TestbedNode>,
    /// The operator's admin config (`vaultfleet admin --config`).
    pub admin_config: PathBuf,
    /// What a vault client pins: the witness's key and the operator's.
    pub verifier: FleetVerifier,
    spec: TestbedSpec,
    epoch: u64,
    admin_public: String,
    witness_public: [u8; 32],
    operator_public: [u8; 32],
    routes: std::collections::BTreeMap<(u64, u64), SocketAddr>,
}

/// What a vault client of the testbed needs (`client.toml`): the pins of its
/// [`FleetVerifier`] and the vault listeners' addresses. Nothing in it is
/// secret.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The fleet's id.
    pub fleet_id: String,
    /// The raft group.
    pub group: u64,
    /// The witness log's namespace.
    pub namespace: String,
    /// The witness key's name.
    pub witness_key_name: String,
    /// The witness's public key, 64 hex digits.
    pub witness_key: String,
    /// The operator's countersigning public key, 64 hex digits.
    pub operator_key: String,
    /// How many of the `[[cosigner]]` pins must have cosigned the bundle's
    /// checkpoint (default 0: none needed, and then no `[[cosigner]]` table
    /// may be listed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cosigners_required: usize,
    /// Each replica's vault listener.
    pub endpoint: Vec<ClientEndpoint>,
    /// Independent witnesses (C2SP tlog-witness cosigners) whose
    /// `cosignature/v1` lines on the bundle's checkpoint count toward
    /// `cosigners_required` (`[[cosigner]]` tables).
    #[serde(rename = "cosigner", default, skip_serializing_if = "Vec::is_empty")]
    pub cosigners: Vec<ClientCosigner>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A `[[cosigner]]` pin in a [`ClientFile`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCosigner {
    /// The cosigner's key name, as its signature lines carry it.
    pub name: String,
    /// Its Ed25519 public key, 64 hex digits.
    pub public_key: String,
}

/// One vault listener in a [`ClientFile`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEndpoint {
    /// The replica's id.
    pub id: u64,
    /// Its vault listen address.
    pub address: SocketAddr,
}

/// Why a [`ClientFile`] could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientFileError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It is not a client file.
    #[error("{path} is not a testbed client file")]
    Parse {
        /// The path.
        path: PathBuf,
        /// The cause (names the line and column).
        #[source]
        source: toml::de::Error,
    },
    /// A key is not 64 hex digits.
    #[error("{path}: {field} is not 64 hex digits")]
    Key {
        /// The path.
        path: PathBuf,
        /// The field.
        field: &'static str,
    },
    /// A `[[cosigner]]` key is not 64 hex digits.
    #[error("{path}: the public_key of [[cosigner]] {name:?}")]
    CosignerKey {
        /// The path.
        path: PathBuf,
        /// The cosigner's name.
        name: String,
        /// What is wrong with the key.
        #[source]
        source: crate::hsm::KeyHexError,
    },
    /// `cosigners_required` is more than the `[[cosigner]]` tables.
    #[error(
        "{path}: cosigners_required = {required}, but only {count} [[cosigner]] tables are listed"
    )]
    CosignersRequired {
        /// The path.
        path: PathBuf,
        /// `cosigners_required`.
        required: usize,
        /// The tables.
        count: usize,
    },
    /// `[[cosigner]]` tables with `cosigners_required = 0`: they would be
    /// ignored.
    #[error("{path}: {count} [[cosigner]] tables, but cosigners_required is 0: set how many must cosign, or remove the tables")]
    CosignersUnused {
        /// The path.
        path: PathBuf,
        /// The tables.
        count: usize,
    },
    /// The cosigners cannot be pinned (a name that cannot sign notes, two
    /// cosigners with one name or key, a cosigner with the witness's key,
    /// too many).
    #[error("{path}: the [[cosigner]] tables cannot be pinned")]
    Cosigners {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: vaultfleet_audit::CosignerPinError,
    },
}

impl ClientFile {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ClientFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ClientFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The verifier a device builds from these pins: the witness's and the
    /// operator's keys, and `cosigners_required` of the `[[cosigner]]` pins
    /// when it is above 0. `path` names the file in errors.
    pub fn verifier(&self, path: &Path) -> Result<FleetVerifier, ClientFileError> {
        let key = |field, text: &str| {
            crate::hsm::parse_key_hex(text).map_err(|_| ClientFileError::Key {
                path: path.to_path_buf(),
                field,
            })
        };
        let verifier = FleetVerifier::new(
            &self.namespace,
            vec![WitnessKey {
                name: self.witness_key_name.clone(),
                public_key: key("witness_key", &self.witness_key)?,
                not_before: 0,
            }],
            key("operator_key", &self.operator_key)?,
        );
        if self.cosigners_required > self.cosigners.len() {
            return Err(ClientFileError::CosignersRequired {
                path: path.to_path_buf(),
                required: self.cosigners_required,
                count: self.cosigners.len(),
            });
        }
        if self.cosigners_required == 0 {
            if !self.cosigners.is_empty() {
                return Err(ClientFileError::CosignersUnused {
                    path: path.to_path_buf(),
                    count: self.cosigners.len(),
                });
            }
            return Ok(verifier);
        }
        let mut cosigners = Vec::with_capacity(self.cosigners.len());
        for c in &self.cosigners {
            let public_key = crate::hsm::parse_key_hex(&c.public_key).map_err(|source| {
                ClientFileError::CosignerKey {
                    path: path.to_path_buf(),
                    name: c.name.clone(),
                    source,
                }
            })?;
            cosigners.push(CosignerKey {
                name: c.name.clone(),
                public_key,
            });
        }
        verifier
            .require_cosigners(self.cosigners_required, cosigners)
            .map_err(|source| ClientFileError::Cosigners {
                path: path.to_path_buf(),
                source,
            })
    }
}

/// Why a testbed could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestbedError {
    /// A file or folder could not be written or read.
    #[error("{path}: file system error")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The target folder is not empty.
    #[error("{0} is not empty: a testbed is generated into a new folder")]
    NotEmpty(PathBuf),
    /// The spec is unusable.
    #[error("bad testbed spec: {0}")]
    Spec(&'static str),
    /// A soft HSM failed.
    #[error("HSM: {what}")]
    Hsm {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: vaultfleet::hsm::HsmError,
    },
    /// The vault's keys could not be made.
    #[error("the vault keys")]
    VaultKeys(#[source] vaultfleet_vault::VaultError),
    /// A transport key could not be made.
    #[error("replica {replica}'s transport key")]
    TransportKey {
        /// The replica.
        replica: u64,
        /// The cause.
        #[source]
        source: crate::hsm::NodeKeyError,
    },
    /// The admin key could not be drawn.
    #[error("the admin key")]
    AdminKey(#[source] vaultfleet_net::KeyError),
    /// The witness refused or failed.
    #[error("the witness")]
    Witness(#[source] vaultfleet_audit::witness::WitnessError),
    /// The operator's countersignature failed.
    #[error("the operator's countersignature")]
    Countersign(#[source] vaultfleet_audit::witness::CountersignError),
    /// The artifact is not valid or did not encode.
    #[error("the fleet artifact")]
    Artifact(#[source] vaultfleet_audit::fleet::ArtifactError),
    /// A vault endpoint could not be made.
    #[error("a vault endpoint")]
    Client(#[source] vaultfleet_vault::RemoteVaultError),
    /// The vault client could not be made (the OS RNG failed).
    #[error("the vault client")]
    ClientSetUp(#[source] Box<vaultfleet_vault::VaultClientError>),
    /// A bundle or evidence did not encode.
    #[error("encoding {what}")]
    Encode {
        /// What.
        what: &'static str,
        /// The cause.
        #[source]
        source: vaultfleet::codec::EncodeError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TestbedError + '_ {
    move |source| TestbedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hsm_err(what: &'static str) -> impl FnOnce(vaultfleet::hsm::HsmError) -> TestbedError {
    move |source| TestbedError::Hsm { what, source }
}

fn encode_err(what: &'static str) -> impl FnOnce(vaultfleet::codec::EncodeError) -> TestbedError {
    move |source| TestbedError::Encode { what, source }
}

fn address(loopback: [u8; 2], id: u64, port: u16) -> SocketAddr {
    // `generate` checks 1 <= id <= 254 first.
    let last = u8::try_from(id).unwrap_or(u8::MAX);
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, loopback[0], loopback[1], last),
        port,
    ))
}

/// Creates `dir` (and its parents) and makes it the owner's only (0700): it
/// holds soft HSMs, whose files are the keys.
fn private_dir(dir: &Path) -> Result<(), TestbedError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// Writes `bytes` to `path` readable by the owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TestbedError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TestbedError> {
    std::fs::write(path, bytes).map_err(io(path))
}

/// Generates the fleet `spec` describes: epoch 1, every replica a voter.
pub fn generate(spec: &TestbedSpec) -> Result<Testbed, TestbedError> {
    if spec.replicas.is_empty() {
        return Err(TestbedError::Spec("no replicas"));
    }
    if spec
        .replicas
        .iter()
        .any(|&(id, _)| !(1..=254).contains(&id))
    {
        return Err(TestbedError::Spec(
            "replica ids must be 1..=254 (the last octet of their address)",
        ));
    }
    let mut ids: Vec<u64> = spec.replicas.iter().map(|&(id, _)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != spec.replicas.len() {
        return Err(TestbedError::Spec("replica ids must be unique"));
    }
    let dir = &spec.dir;
    private_dir(dir)?;
    if std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(TestbedError::NotEmpty(dir.clone()));
    }

    // The security world; its OPAQUE setup is sealed under it.
    let world = SoftHsm::open(dir.join("world.hsm")).map_err(hsm_err("create the world HSM"))?;
    let sealed_setup = VaultKeys::provision(&world).map_err(TestbedError::VaultKeys)?;
    write(&dir.join("opaque-setup.sealed"), &sealed_setup)?;
    drop(world);

    // The witness and the operator.
    let witness_dir = dir.join("witness");
    private_dir(&witness_dir)?;
    let operator = SoftHsm::open(dir.join("operator.hsm")).map_err(hsm_err("the operator HSM"))?;
    let operator_key = operator
        .key(OPERATOR_KEY, KeyKind::Signing)
        .and_then(|k| operator.public_key(k))
        .map_err(hsm_err("read the operator key"))?;
    let witness_key = open_witness(dir)?
        .public_key(WITNESS_KEY)
        .map_err(TestbedError::Witness)?;

    // The operator's admin key, pinned in every node.
    let mut admin_secret = zeroize::Zeroizing::new([0u8; 32]);
    operator
        .random(admin_secret.as_mut_slice())
        .map_err(hsm_err("draw the admin key"))?;
    let admin_hex = zeroize::Zeroizing::new(format!("{}\n", hex(admin_secret.as_slice())));
    let admin = StaticSecret::from_bytes(admin_secret).map_err(TestbedError::AdminKey)?;
    write_private(&dir.join("admin.key"), admin_hex.as_bytes())?;

    let mut tb = Testbed {
        dir: dir.clone(),
        fleet_id: spec.fleet_id.clone(),
        group: TESTBED_GROUP,
        nodes: Vec::new(),
        admin_config: dir.join("admin.toml"),
        verifier: FleetVerifier::new(
            &spec.namespace,
            vec![WitnessKey {
                name: WITNESS_KEY.into(),
                public_key: witness_key,
                not_before: 0,
            }],
            operator_key,
        ),
        spec: spec.clone(),
        epoch: 0,
        admin_public: hex(admin.public_key().as_bytes()),
        witness_public: witness_key,
        operator_public: operator_key,
        routes: std::collections::BTreeMap::new(),
    };
    for (id, datacenter) in &spec.replicas {
        let node = tb.new_node(*id, datacenter, false)?;
        tb.nodes.push(node);
    }
    tb.publish_epoch()?;
    Ok(tb)
}

fn open_witness(dir: &Path) -> Result<Witness<SoftHsm>, TestbedError> {
    let witness_dir = dir.join("witness");
    let hsm = SoftHsm::open(witness_dir.join("witness.hsm")).map_err(hsm_err("the witness HSM"))?;
    Witness::open(
        hsm,
        vec![WitnessKeySpec {
            name: WITNESS_KEY.into(),
            not_before: 0,
        }],
        witness_dir.join("witness.state"),
    )
    .map_err(TestbedError::Witness)
}

impl Testbed {
    /// Replaces replica `old` (its disk lost, say) by a new replica `new` in
    /// `datacenter`, as `docs/operations.md` prescribes: a new epoch's
    /// artifact lists `new` (with its own keys) instead of `old`; the witness
    /// logs it, the operator countersigns it, and every node's evidence,
    /// config and the client and admin files are rewritten for it. `new`'s
    /// config joins the running fleet (it never bootstraps). Running nodes
    /// take the new files when restarted or sent SIGHUP; the membership
    /// changes themselves are the operator's admin calls (add-learner,
    /// promote, remove).
    pub fn replace(
        &mut self,
        old: u64,
        new: u64,
        datacenter: &str,
    ) -> Result<TestbedNode, TestbedError> {
        if !(1..=254).contains(&new) || self.nodes.iter().any(|n| n.id == new) {
            return Err(TestbedError::Spec(
                "the new replica needs an unused id in 1..=254 (ids are never reused)",
            ));
        }
        let index = self
            .nodes
            .iter()
            .position(|n| n.id == old)
            .ok_or(TestbedError::Spec(
                "the replaced replica is not in the fleet",
            ))?;
        let node = self.new_node(new, datacenter, true)?;
        self.nodes.remove(index);
        self.nodes.push(node.clone());
        self.publish_epoch()?;
        Ok(node)
    }

    /// Routes node `from`'s traffic to node `to` through `via` (a fault
    /// proxy's listener): `from`'s config lists `via` as `to`'s address. Takes
    /// effect with [`Testbed::write_configs`] (and a node's restart or SIGHUP).
    pub fn route(&mut self, from: u64, to: u64, via: SocketAddr) {
        self.routes.insert((from, to), via);
    }

    /// Writes every node's config for the current epoch and routes.
    pub fn write_configs(&self) -> Result<(), TestbedError> {
        let setup_path = self.dir.join("opaque-setup.sealed");
        let witness_log = self.dir.join("witness").join("witness.state");
        for n in &self.nodes {
            let peers = self.peers_toml_for(n.id);
            let config = format!(
                "# Testbed node {id} of fleet {fleet}, epoch {epoch} (generated).\n\
                 fleet_id = \"{fleet}\"\n\
                 group = {TESTBED_GROUP}\n\
                 replica_id = {id}\n\
                 datacenter = \"{dc}\"\n\
                 data_dir = \"data\"\n\
                 transport_key = \"transport.key\"\n\
                 join = {joins}\n\n\
                 [listen]\npeer = \"{peer}\"\nvault = \"{vault}\"\nmetrics = \"{metrics}\"\n\n\
                 [hsm]\nkind = \"soft\"\nfile = \"hsm.soft\"\n\n\
                 [vault]\nopaque_setup = \"{setup}\"\nevidence = \"evidence.bin\"\n\
                 witness_log = \"{log}\"\nnamespace = \"{namespace}\"\n\
                 operator_key = \"{operator}\"\n\n\
                 [[vault.witness_key]]\nname = \"{witness_name}\"\npublic_key = \"{witness}\"\n\
                 not_before = 0\n\n\
                 [log]\nformat = \"{format}\"\n\n\
                 [[admin_key]]\nname = \"testbed-operator\"\npublic_key = \"{admin}\"\n\n{peers}",
                id = n.id,
                epoch = self.epoch,
                namespace = self.spec.namespace,
                fleet = self.fleet_id,
                dc = n.datacenter,
                joins = n.joins,
                peer = n.peer,
                vault = n.vault,
                metrics = n.metrics,
                setup = setup_path.display(),
                log = witness_log.display(),
                format = if self.spec.json_logs { "json" } else { "text" },
                admin = self.admin_public,
                operator = hex(&self.operator_public),
                witness_name = WITNESS_KEY,
                witness = hex(&self.witness_public),
            );
            write(&n.config, config.as_bytes())?;
        }

        Ok(())
    }

    /// The `[[peer]]` tables of node `from`'s config: every node, at the
    /// address `from` dials it (a route's proxy, or its listener).
    fn peers_toml_for(&self, from: u64) -> String {
        self.nodes.iter().fold(String::new(), |mut s, n| {
            let address = self.routes.get(&(from, n.id)).copied().unwrap_or(n.peer);
            let _ = write!(
                s,
                "[[peer]]\nid = {}\naddress = \"{}\"\ndatacenter = \"{}\"\ntransport_key = \"{}\"\n\n",
                n.id,
                address,
                n.datacenter,
                hex(n.transport_key.as_bytes())
            );
            s
        })
    }

    /// A user's device for this testbed: a vault client of every node's vault
    /// listener, trusting only the witness's and the operator's keys, on the
    /// wall clock.
    pub fn vault_client(&self, cfg: VaultClientConfig) -> Result<VaultClient, TestbedError> {
        let all: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        self.vault_client_of(&all, cfg)
    }

    /// Like [`Testbed::vault_client`], reaching only the nodes `replicas`.
    pub fn vault_client_of(
        &self,
        replicas: &[u64],
        cfg: VaultClientConfig,
    ) -> Result<VaultClient, TestbedError> {
        let clock: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        let trust = BundleTrust::new(self.verifier.clone(), Arc::clone(&clock));
        let mut endpoints: Vec<Arc<dyn VaultEndpoint>> = Vec::new();
        for n in self.nodes.iter().filter(|n| replicas.contains(&n.id)) {
            let endpoint = RemoteVaultEndpoint::new(
                n.id,
                n.vault,
                &self.fleet_id,
                ServerTrust::Bundles(Arc::clone(&trust)),
                OpenClientConfig::default(),
            )
            .map_err(TestbedError::Client)?;
            endpoints.push(Arc::new(endpoint));
        }
        VaultClient::with_verifier(endpoints, self.group, self.verifier.clone(), clock, cfg)
            .map_err(|e| TestbedError::ClientSetUp(Box::new(e)))
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A node's folder, its copy of the security world (with its response key
    /// made first) and its sealed transport key.
    fn new_node(
        &self,
        id: u64,
        datacenter: &str,
        joins: bool,
    ) -> Result<TestbedNode, TestbedError> {
        let dir = &self.dir;
        let world_path = dir.join("world.hsm");
        let sealed_setup = std::fs::read(dir.join("opaque-setup.sealed"))
            .map_err(io(&dir.join("opaque-setup.sealed")))?;
        let world = SoftHsm::open(&world_path).map_err(hsm_err("open the world HSM"))?;
        let keys = VaultKeys::open(world.clone(), &sealed_setup, TESTBED_GROUP, id)
            .map_err(TestbedError::VaultKeys)?;
        let response_key = keys
            .response_public_key()
            .map_err(TestbedError::VaultKeys)?;
        let opaque_key = keys.opaque_public_key();
        drop(keys);
        drop(world);
        let node_dir = dir.join(format!("node-{id}"));
        private_dir(&node_dir)?;
        let hsm_path = node_dir.join("hsm.soft");
        std::fs::copy(&world_path, &hsm_path).map_err(io(&hsm_path))?;
        let hsm = SoftHsm::open(&hsm_path).map_err(hsm_err("open a node's HSM copy"))?;
        let transport_key = crate::hsm::create_transport_key(
            &hsm,
            &node_dir.join("transport.key"),
            &self.fleet_id,
            id,
        )
        .map_err(|source| TestbedError::TransportKey {
            replica: id,
            source,
        })?;
        Ok(TestbedNode {
            id,
            datacenter: datacenter.to_string(),
            config: node_dir.join("node.toml"),
            data_dir: node_dir.join("data"),
            peer: address(self.spec.loopback, id, PEER_PORT),
            vault: address(self.spec.loopback, id, VAULT_PORT),
            metrics: address(self.spec.loopback, id, METRICS_PORT),
            transport_key,
            response_key,
            opaque_key,
            joins,
        })
    }

    /// The next epoch's artifact for the current nodes, witnessed and
    /// countersigned; every node's evidence and config, the admin config and
    /// the client file rewritten for it.
    fn publish_epoch(&mut self) -> Result<(), TestbedError> {
        let epoch = self.epoch + 1;
        let now = self.spec.now;
        let mut replicas: Vec<ReplicaKeys> = self
            .nodes
            .iter()
            .map(|n| ReplicaKeys {
                id: n.id,
                datacenter: n.datacenter.clone(),
                response_key: n.response_key,
                transport_key: *n.transport_key.as_bytes(),
                opaque_key: n.opaque_key,
            })
            .collect();
        replicas.sort_by_key(|r| r.id);
        let artifact = FleetArtifact {
            fleet_id: self.fleet_id.clone(),
            epoch,
            voters: replicas.iter().map(|r| r.id).collect(),
            replicas,
            learners: vec![],
            not_before: now.saturating_sub(3600),
            not_after: now.saturating_add(30 * 86_400),
        };
        let artifact_bytes = artifact.encode().map_err(TestbedError::Artifact)?;
        let digest = artifact.digest().map_err(TestbedError::Artifact)?;
        let namespace = &self.spec.namespace;
        let mut witness = open_witness(&self.dir)?;
        // Epochs are signed in order, each at a later time than the last.
        let signed_at = now.saturating_add(epoch);
        let witnessed = witness
            .sign(namespace, epoch, digest, signed_at)
            .map_err(TestbedError::Witness)?;
        let operator =
            SoftHsm::open(self.dir.join("operator.hsm")).map_err(hsm_err("the operator HSM"))?;
        let countersignature =
            countersign(&operator, OPERATOR_KEY, &witnessed).map_err(TestbedError::Countersign)?;
        let tree = witness.tree(namespace).ok_or(TestbedError::Spec(
            "the witness has no log for the namespace",
        ))?;
        let inclusion = tree
            .inclusion_proof(witnessed.leaf_index, tree.size())
            .map_err(|_| TestbedError::Spec("no inclusion proof for the new leaf"))?;
        let checkpoint = witness
            .checkpoint(namespace, signed_at)
            .map_err(TestbedError::Witness)?;
        let bundle = Bundle::assemble(
            artifact_bytes,
            &witnessed,
            countersignature,
            inclusion,
            &checkpoint,
        )
        .encode()
        .map_err(encode_err("the bundle"))?;
        drop(witness);
        let evidence = Evidence {
            bundle,
            attestations: vec![],
            ceremony: Ceremony {
                artifact_digest: digest,
                firmware: vec![],
                threshold: 0,
                signatures: vec![],
            },
        }
        .encode()
        .map_err(encode_err("the evidence"))?;
        self.epoch = epoch;

        let peers = peers_toml(&self.nodes);
        write(
            &self.admin_config,
            format!(
                "# The operator's view of the testbed fleet (vaultfleet admin --config).\n\
                 fleet_id = \"{fleet}\"\ngroup = {TESTBED_GROUP}\nkey_file = \"admin.key\"\n\n{peers}",
                fleet = self.fleet_id,
            )
            .as_bytes(),
        )?;
        for n in &self.nodes {
            let node_dir = n.config.parent().unwrap_or(&self.dir);
            write(&node_dir.join("evidence.bin"), &evidence)?;
        }
        self.write_configs()?;

        let client = ClientFile {
            fleet_id: self.fleet_id.clone(),
            group: TESTBED_GROUP,
            namespace: namespace.clone(),
            witness_key_name: WITNESS_KEY.into(),
            witness_key: hex(&self.witness_public),
            operator_key: hex(&self.operator_public),
            cosigners_required: 0,
            endpoint: self
                .nodes
                .iter()
                .map(|n| ClientEndpoint {
                    id: n.id,
                    address: n.vault,
                })
                .collect(),
            cosigners: vec![],
        };
        let client_text = toml::to_string(&client)
            .map_err(|_| TestbedError::Spec("the client file does not serialize"))?;
        write(&self.dir.join("client.toml"), client_text.as_bytes())
    }
}

/// The `[[peer]]` tables of every node.
fn peers_toml(nodes: &[TestbedNode]) -> String {
    nodes.iter().fold(String::new(), |mut s, n| {
        let _ = write!(
            s,
            "[[peer]]\nid = {}\naddress = \"{}\"\ndatacenter = \"{}\"\ntransport_key = \"{}\"\n\n",
            n.id,
            n.peer,
            n.datacenter,
            hex(n.transport_key.as_bytes())
        );
        s
    })
}
