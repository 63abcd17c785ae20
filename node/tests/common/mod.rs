//! The test fleet fixture shared by the node's tests: a security world with
//! the vault's keys, the sealed OPAQUE setup, a witnessed and countersigned
//! bundle inside deployment evidence, the witness's log, each node's HSM
//! copy and sealed transport key, and config files pointing at them, all
//! made with library calls.
// Tests of sockets and processes run in wall-clock time, every wait bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types, dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::evidence::{Ceremony, Evidence};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{Bundle, FleetVerifier, Witness, WitnessKey, WitnessKeySpec};
use vaultfleet_node::config::NodeConfig;
use vaultfleet_node::hsm::{create_transport_key, hex};
use vaultfleet_node::run::RunningNode;
use vaultfleet_vault::VaultKeys;

pub const FLEET: &str = "refusal-fleet";
pub const NS: &str = "example.vault.fleet_keys.v1";
pub const GROUP: u64 = 1;
pub const READY_WAIT: Duration = Duration::from_secs(30);

/// A fleet's files in a folder: everything a node's config points at.
pub struct Fixture {
    dir: tempfile::TempDir,
    /// The artifact's time (its validity covers it).
    pub now: u64,
    /// Per replica: its datacenter and transport public key (hex).
    pub replicas: BTreeMap<u64, (String, String)>,
    /// What a vault client pins.
    pub verifier: FleetVerifier,
    /// Where each replica listens for peers (default `127.0.0.1:(1 + id)`,
    /// never dialled) and for vault clients (default port 0).
    pub addresses: BTreeMap<u64, (SocketAddr, SocketAddr)>,
}

impl Fixture {
    /// A fleet of `members` (id, datacenter), every node with its own HSM
    /// copy (`node-N/hsm.soft`) and sealed transport key.
    pub fn new(members: &[(u64, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let world_path = root.join("world.hsm");
        let world = SoftHsm::open(&world_path).unwrap();
        let setup = VaultKeys::provision(&world).unwrap();
        std::fs::write(root.join("opaque-setup.sealed"), &setup).unwrap();
        let mut keys = Vec::new();
        for &(id, dc) in members {
            let k = VaultKeys::open(world.clone(), &setup, GROUP, id).unwrap();
            keys.push((
                id,
                dc,
                k.response_public_key().unwrap(),
                k.opaque_public_key(),
            ));
        }
        drop(world);
        let mut replicas = BTreeMap::new();
        let mut artifact_replicas = Vec::new();
        for (id, dc, response_key, opaque_key) in keys {
            let node_dir = root.join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            std::fs::copy(&world_path, node_dir.join("hsm.soft")).unwrap();
            let hsm = SoftHsm::open(node_dir.join("hsm.soft")).unwrap();
            let public =
                create_transport_key(&hsm, &node_dir.join("transport.key"), FLEET, id).unwrap();
            replicas.insert(id, (dc.to_string(), hex(public.as_bytes())));
            artifact_replicas.push(ReplicaKeys {
                id,
                datacenter: dc.into(),
                response_key,
                transport_key: *public.as_bytes(),
                opaque_key,
            });
        }
        let artifact = FleetArtifact {
            fleet_id: FLEET.into(),
            epoch: 1,
            voters: artifact_replicas.iter().map(|r| r.id).collect(),
            replicas: artifact_replicas,
            learners: vec![],
            not_before: now - 3600,
            not_after: now + 86_400,
        };
        let witness_dir = root.join("witness");
        std::fs::create_dir_all(&witness_dir).unwrap();
        let mut witness = Witness::open(
            SoftHsm::open(witness_dir.join("witness.hsm")).unwrap(),
            vec![WitnessKeySpec {
                name: "witness-1".into(),
                not_before: 0,
            }],
            witness_dir.join("witness.state"),
        )
        .unwrap();
        let witnessed = witness
            .sign(NS, 1, artifact.digest().unwrap(), now)
            .unwrap();
        let operator = SoftHsm::open(root.join("operator.hsm")).unwrap();
        let cs = countersign(&operator, "operator", &witnessed).unwrap();
        let operator_key = operator
            .public_key(operator.key("operator", KeyKind::Signing).unwrap())
            .unwrap();
        let tree = witness.tree(NS).unwrap().clone();
        let proof = tree
            .inclusion_proof(witnessed.leaf_index, tree.size())
            .unwrap();
        let checkpoint = witness.checkpoint(NS, now).unwrap();
        let bundle = Bundle::assemble(
            artifact.encode().unwrap(),
            &witnessed,
            cs,
            proof,
            &checkpoint,
        )
        .encode()
        .unwrap();
        let evidence = Evidence {
            bundle,
            attestations: vec![],
            ceremony: Ceremony {
                artifact_digest: artifact.digest().unwrap(),
                firmware: vec![],
                threshold: 0,
                signatures: vec![],
            },
        }
        .encode()
        .unwrap();
        std::fs::write(root.join("evidence.bin"), evidence).unwrap();
        let verifier = FleetVerifier::new(
            NS,
            vec![WitnessKey {
                name: "witness-1".into(),
                public_key: witness.public_key("witness-1").unwrap(),
                not_before: 0,
            }],
            operator_key,
        );
        Fixture {
            dir,
            now,
            replicas,
            verifier,
            addresses: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Node `id`'s config text: a soft HSM unless `hsm` gives the `[hsm]`
    /// table's body, its own data directory unless `data_dir` is given, and
    /// `[[peer]]` tables for `peers` (their datacenters and keys from the
    /// fixture; addresses on loopback, port 0 for this node's listeners).
    pub fn config_text(
        &self,
        id: u64,
        peers: &[u64],
        hsm: Option<&str>,
        data_dir: Option<&Path>,
    ) -> String {
        let node_dir = self.root().join(format!("node-{id}"));
        let data_dir = data_dir.map_or_else(|| node_dir.join("data"), Path::to_path_buf);
        let hsm = hsm.map_or_else(
            || {
                format!(
                    "kind = \"soft\"\nfile = \"{}\"\n",
                    node_dir.join("hsm.soft").display()
                )
            },
            str::to_string,
        );
        let mut text = format!(
            "fleet_id = \"{FLEET}\"\nreplica_id = {id}\ndatacenter = \"{dc}\"\n\
             data_dir = \"{data}\"\ntransport_key = \"{key}\"\n\n\
             [listen]\npeer = \"{peer}\"\nvault = \"{vault}\"\n\n\
             [hsm]\n{hsm}\n\
             [vault]\nopaque_setup = \"{root}/opaque-setup.sealed\"\nevidence = \"{root}/evidence.bin\"\n\
             witness_log = \"{root}/witness/witness.state\"\nnamespace = \"{NS}\"\n\n\
             [timing]\ntick_ms = 10\nheartbeat_ticks = 2\nelection_ticks = 10\n\n",
            dc = self.replicas[&id].0,
            data = data_dir.display(),
            key = node_dir.join("transport.key").display(),
            root = self.root().display(),
            peer = self.peer_listen(id),
            vault = self.vault_listen(id),
        );
        for p in peers {
            let (dc, key) = &self.replicas[p];
            // Peers other than a running one are never dialled in these tests.
            text.push_str(&format!(
                "[[peer]]\nid = {p}\naddress = \"{address}\"\ndatacenter = \"{dc}\"\ntransport_key = \"{key}\"\n\n",
                address = self.peer_address(*p),
            ));
        }
        text
    }

    /// Where replica `id` listens for peers.
    fn peer_listen(&self, id: u64) -> String {
        self.addresses
            .get(&id)
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.0.to_string())
    }

    /// Where replica `id` listens for vault clients.
    fn vault_listen(&self, id: u64) -> String {
        self.addresses
            .get(&id)
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.1.to_string())
    }

    /// Where the others dial replica `id`.
    fn peer_address(&self, id: u64) -> String {
        self.addresses
            .get(&id)
            .map_or_else(|| format!("127.0.0.1:{}", 1 + id), |a| a.0.to_string())
    }

    /// Writes `text` as node `id`'s config file `name`; returns its path.
    pub fn write_config(&self, id: u64, name: &str, text: &str) -> PathBuf {
        let path = self.root().join(format!("node-{id}")).join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts node `id` alone as a one-voter fleet, waits until it serves,
    /// and stops it: its data directory then holds a real replica's state.
    pub fn run_once(&self, id: u64) -> PathBuf {
        let path = self.write_config(id, "alone.toml", &self.config_text(id, &[id], None, None));
        let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
        assert!(node.wait_ready(READY_WAIT), "a one-voter fleet serves");
        node.stop().unwrap();
        self.root().join(format!("node-{id}")).join("data")
    }
}

/// Every file under `dir`: its path, bytes and modification time.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                out.insert(e.path(), (Vec::new(), meta.modified().unwrap()));
                stack.push(e.path());
            } else {
                out.insert(
                    e.path(),
                    (std::fs::read(e.path()).unwrap(), meta.modified().unwrap()),
                );
            }
        }
    }
    out
}

/// `e` and all its causes, one string.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(" / ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
