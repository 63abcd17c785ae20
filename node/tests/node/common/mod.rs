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
    /// The witness's public key (pinned in every node's config).
    pub witness_public: [u8; 32],
    /// The operator's countersigning public key (pinned too).
    pub operator_public: [u8; 32],
    /// Every replica's keys, as an artifact lists them.
    pub keys: BTreeMap<u64, ReplicaKeys>,
}

/// A witness signs `artifact` at `timestamp` into its log, the operator
/// countersigns: the deployment evidence holding the bundle.
fn sign_evidence(
    witness: &mut Witness<SoftHsm>,
    operator: &SoftHsm,
    artifact: &FleetArtifact,
    timestamp: u64,
) -> Vec<u8> {
    let witnessed = witness
        .sign(NS, artifact.epoch, artifact.digest().unwrap(), timestamp)
        .unwrap();
    let cs = countersign(operator, "operator", &witnessed).unwrap();
    let tree = witness.tree(NS).unwrap().clone();
    let proof = tree
        .inclusion_proof(witnessed.leaf_index, tree.size())
        .unwrap();
    let checkpoint = witness.checkpoint(NS, timestamp).unwrap();
    let bundle = Bundle::assemble(
        artifact.encode().unwrap(),
        &witnessed,
        cs,
        proof,
        &checkpoint,
    )
    .encode()
    .unwrap();
    evidence_of(bundle, artifact)
}

/// Deployment evidence around `bundle` (no attestations).
pub fn evidence_of(bundle: Vec<u8>, artifact: &FleetArtifact) -> Vec<u8> {
    Evidence {
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
    .unwrap()
}

/// The witness whose state lives in `dir` (created on first use).
fn open_witness(dir: &Path) -> Witness<SoftHsm> {
    std::fs::create_dir_all(dir).unwrap();
    Witness::open(
        SoftHsm::open(dir.join("witness.hsm")).unwrap(),
        vec![WitnessKeySpec {
            name: "witness-1".into(),
            not_before: 0,
        }],
        dir.join("witness.state"),
    )
    .unwrap()
}

impl Fixture {
    /// A fleet of `members` (id, datacenter), every node with its own HSM
    /// copy (`node-N/hsm.soft`) and sealed transport key.
    pub fn new(members: &[(u64, &str)]) -> Fixture {
        let all: Vec<u64> = members.iter().map(|m| m.0).collect();
        Self::listing(members, &all)
    }

    /// A fleet of `members` whose epoch-1 artifact lists only `listed` (as
    /// voters).
    pub fn listing(members: &[(u64, &str)], listed: &[u64]) -> Fixture {
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
        let keys: BTreeMap<u64, ReplicaKeys> =
            artifact_replicas.into_iter().map(|r| (r.id, r)).collect();
        let artifact = artifact_of(&keys, 1, listed, &[], now);
        let mut witness = open_witness(&root.join("witness"));
        let operator = SoftHsm::open(root.join("operator.hsm")).unwrap();
        let operator_key = operator
            .public_key(operator.key("operator", KeyKind::Signing).unwrap())
            .unwrap();
        let evidence = sign_evidence(&mut witness, &operator, &artifact, now);
        std::fs::write(root.join("evidence.bin"), evidence).unwrap();
        let witness_public = witness.public_key("witness-1").unwrap();
        let verifier = FleetVerifier::new(
            NS,
            vec![WitnessKey {
                name: "witness-1".into(),
                public_key: witness_public,
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
            witness_public,
            operator_public: operator_key,
            keys,
        }
    }

    /// The artifact of `epoch` listing `voters` and `learners`.
    pub fn artifact(&self, epoch: u64, voters: &[u64], learners: &[u64]) -> FleetArtifact {
        artifact_of(&self.keys, epoch, voters, learners, self.now)
    }

    /// The fleet's witness signs `artifact` (one second later per epoch, into
    /// its log `witness/witness.state`), the operator countersigns; the
    /// evidence is written as `name` in the fixture's folder.
    pub fn sign(&self, artifact: &FleetArtifact, name: &str) -> PathBuf {
        let mut witness = open_witness(&self.root().join("witness"));
        let operator = SoftHsm::open(self.root().join("operator.hsm")).unwrap();
        let evidence = sign_evidence(&mut witness, &operator, artifact, self.now + artifact.epoch);
        let path = self.root().join(name);
        std::fs::write(&path, evidence).unwrap();
        path
    }

    /// Evidence for `artifact` from another witness (its own key, also named
    /// `witness-1`, and its own log in folder `name`), countersigned by the
    /// fleet's operator: (the evidence, that witness's log).
    pub fn forge(&self, artifact: &FleetArtifact, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.root().join(name);
        let mut witness = open_witness(&dir);
        let operator = SoftHsm::open(self.root().join("operator.hsm")).unwrap();
        // A witness signs epochs in order: the earlier ones first.
        for epoch in 1..artifact.epoch {
            let mut earlier = artifact.clone();
            earlier.epoch = epoch;
            sign_evidence(&mut witness, &operator, &earlier, self.now + epoch);
        }
        let evidence = sign_evidence(&mut witness, &operator, artifact, self.now + artifact.epoch);
        let path = dir.join("evidence.bin");
        std::fs::write(&path, evidence).unwrap();
        (path, dir.join("witness.state"))
    }

    /// `text` (a config) reading the evidence at `evidence` and the witness
    /// log at `witness_log` instead of the fixture's own.
    pub fn with_evidence(&self, text: &str, evidence: &Path, witness_log: &Path) -> String {
        let root = self.root().display().to_string();
        text.replacen(
            &format!("evidence = \"{root}/evidence.bin\""),
            &format!("evidence = \"{}\"", evidence.display()),
            1,
        )
        .replacen(
            &format!("witness_log = \"{root}/witness/witness.state\""),
            &format!("witness_log = \"{}\"", witness_log.display()),
            1,
        )
    }

    /// The fixture's own witness log.
    pub fn witness_log(&self) -> PathBuf {
        self.root().join("witness").join("witness.state")
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
             witness_log = \"{root}/witness/witness.state\"\nnamespace = \"{NS}\"\n\
             operator_key = \"{operator}\"\n\n\
             [[vault.witness_key]]\nname = \"witness-1\"\npublic_key = \"{witness}\"\n\n\
             [timing]\ntick_ms = 10\nheartbeat_ticks = 2\nelection_ticks = 10\n\n",
            dc = self.replicas[&id].0,
            data = data_dir.display(),
            key = node_dir.join("transport.key").display(),
            root = self.root().display(),
            peer = self.peer_listen(id),
            vault = self.vault_listen(id),
            operator = hex(&self.operator_public),
            witness = hex(&self.witness_public),
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
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.root().join(format!("node-{id}")).join(name);
        std::fs::write(&path, text).unwrap();
        // A trust root: group and others may not write it (whatever the umask).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
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

/// The artifact of `epoch` over `keys`, listing `voters` and `learners`, valid
/// for a day around `now`.
fn artifact_of(
    keys: &BTreeMap<u64, ReplicaKeys>,
    epoch: u64,
    voters: &[u64],
    learners: &[u64],
    now: u64,
) -> FleetArtifact {
    FleetArtifact {
        fleet_id: FLEET.into(),
        epoch,
        replicas: keys
            .values()
            .filter(|r| voters.contains(&r.id) || learners.contains(&r.id))
            .cloned()
            .collect(),
        voters: voters.to_vec(),
        learners: learners.to_vec(),
        not_before: now - 3600,
        not_after: now + 86_400,
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
