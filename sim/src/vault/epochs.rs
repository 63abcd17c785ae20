//! The vault fleet's epochs as its operator publishes them
//! (`docs/operations.md`, "Replacing a replica", step 2): each membership
//! change gets a new epoch whose artifact lists the members' keys (a new
//! member's in, a removed member's out), which the real witness
//! ([`Witness`], its state in a temporary directory) signs and logs, the
//! operator's HSM key countersigns, and which is assembled into a validation
//! [`Bundle`] with an inclusion proof in a witness-signed checkpoint. When a
//! replaced host may have been taken (its keys may be in other hands), the
//! operator also retires every epoch that lists it early
//! ([`EpochRetirement`]).
//!
//! Services serve an epoch through a [`BundleSource`] over the witness's log;
//! devices check replies with a [`FleetVerifier`] pinned to the witness's and
//! the operator's keys only. The published artifacts are the ground truth of
//! the epoch checker.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::witness::{countersign, Witness, WitnessKeySpec};
use vaultfleet_audit::{Bundle, FleetVerifier, WitnessKey};
use vaultfleet_vault::BundleSource;

/// The witness's log namespace of the simulated fleet.
const NAMESPACE: &str = "sim.vaultfleet/fleet";
/// The simulated fleet's id.
const FLEET_ID: &str = "sim-fleet";
/// The witness's one signing key.
const WITNESS_KEY: &str = "sim-witness";
/// The operator's countersigning key in the fleet's HSM.
const OPERATOR_KEY: &str = "operator";
/// Unix time (seconds) at the simulation's virtual time 0: witness timestamps
/// and the devices' verifier clocks are this plus the virtual seconds.
pub(super) const UNIX_AT_START: u64 = 1_800_000_000;
/// How long an artifact is valid from its publication: longer than any run.
const VALIDITY_S: u64 = 365 * 24 * 3600;

/// The operator's published epochs and the witness that logs them.
pub(super) struct Epochs {
    hsm: SoftHsm,
    witness: Witness<SoftHsm>,
    /// Holds the witness's state file; removed with the workload.
    _dir: tempfile::TempDir,
    witness_key: [u8; 32],
    operator_key: [u8; 32],
    /// The current members, by id.
    members: BTreeMap<u64, ReplicaKeys>,
    /// Every published artifact and its bundle, epoch `i + 1` at `i`.
    published: Vec<(FleetArtifact, Vec<u8>)>,
    /// Every early retirement published, oldest first: every epoch through
    /// it, and its encoding (services serve the newest).
    pub(super) retirements: Vec<(u64, Vec<u8>)>,
}

/// The keys of replica `id` in datacenter `dc`, as `vaultfleet node init`
/// prints them: its response and OPAQUE keys from its HSM; the simulator has
/// no transport, so its transport key is a placeholder derived from the id.
pub(super) fn replica_keys(
    id: u64,
    dc: &str,
    response_key: [u8; 32],
    opaque_key: [u8; 32],
) -> ReplicaKeys {
    let transport_key: [u8; 32] = Sha256::digest(format!("sim transport key {id}")).into();
    ReplicaKeys {
        id,
        datacenter: dc.to_string(),
        response_key,
        transport_key,
        opaque_key,
    }
}

impl Epochs {
    /// The witness (its keys in `hsm`, beside the operator's) and epoch 1
    /// listing `members`, published at virtual second 0.
    pub(super) fn new(hsm: SoftHsm, members: Vec<ReplicaKeys>) -> Self {
        let dir = tempfile::tempdir()
            .unwrap_or_else(|e| panic!("a temporary directory for the witness: {e}"));
        let spec = WitnessKeySpec {
            name: WITNESS_KEY.into(),
            not_before: 0,
        };
        let witness = Witness::open(hsm.clone(), vec![spec], dir.path().join("witness.state"))
            .unwrap_or_else(|e| panic!("a fresh witness opens: {e}"));
        let witness_key = witness
            .public_key(WITNESS_KEY)
            .unwrap_or_else(|e| panic!("the witness's key: {e}"));
        let operator_key = hsm
            .key(OPERATOR_KEY, KeyKind::Signing)
            .and_then(|k| hsm.public_key(k))
            .unwrap_or_else(|e| panic!("the operator's key: {e}"));
        let mut epochs = Self {
            hsm,
            witness,
            _dir: dir,
            witness_key,
            operator_key,
            members: members.into_iter().map(|k| (k.id, k)).collect(),
            published: Vec::new(),
            retirements: Vec::new(),
        };
        epochs.publish(0);
        epochs
    }

    /// The newest published epoch.
    pub(super) fn newest(&self) -> u64 {
        self.published.len() as u64
    }

    /// The artifact of `epoch`, if published.
    pub(super) fn artifact(&self, epoch: u64) -> Option<&FleetArtifact> {
        let i = usize::try_from(epoch.checked_sub(1)?).ok()?;
        self.published.get(i).map(|(a, _)| a)
    }

    /// The newest epoch retired early (0: none).
    pub(super) fn retired_through(&self) -> u64 {
        self.retirements.last().map_or(0, |(e, _)| *e)
    }

    /// The epochs retired by `encoded` if it is, byte for byte, a
    /// retirement the operator published; `None` otherwise.
    pub(super) fn published_retirement(&self, encoded: &[u8]) -> Option<u64> {
        self.retirements
            .iter()
            .find(|(_, r)| r.as_slice() == encoded)
            .map(|(e, _)| *e)
    }

    /// The ids the newest configuration lists (the next artifact's).
    pub(super) fn member_ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// A device's verifier: pinned to the witness's and the operator's keys
    /// only, requiring consistency proofs (as `VaultClient::with_verifier`).
    pub(super) fn verifier(&self) -> FleetVerifier {
        let pins = vec![WitnessKey {
            name: WITNESS_KEY.into(),
            public_key: self.witness_key,
            not_before: 0,
        }];
        FleetVerifier::new(NAMESPACE, pins, self.operator_key).require_consistency_proofs()
    }

    /// `keys` joins the fleet (at the next publication).
    pub(super) fn join(&mut self, keys: ReplicaKeys) {
        self.members.insert(keys.id, keys);
    }

    /// `id` leaves the fleet (at the next publication).
    pub(super) fn leave(&mut self, id: u64) {
        self.members.remove(&id);
    }

    /// Whether `id` is a member of the newest configuration.
    pub(super) fn is_member(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    /// Publishes the next epoch with the current members at virtual second
    /// `now_s`: the witness signs and logs its digest, the operator
    /// countersigns, and the bundle is assembled. Returns the epoch.
    pub(super) fn publish(&mut self, now_s: u64) -> u64 {
        let epoch = self.newest() + 1;
        let at = UNIX_AT_START + now_s;
        let ids: Vec<u64> = self.members.keys().copied().collect();
        let artifact = FleetArtifact {
            fleet_id: FLEET_ID.into(),
            epoch,
            replicas: self.members.values().cloned().collect(),
            voters: ids,
            learners: Vec::new(),
            not_before: UNIX_AT_START.saturating_sub(1),
            not_after: at + VALIDITY_S,
        };
        let encoded = artifact
            .encode()
            .unwrap_or_else(|e| panic!("epoch {epoch}'s artifact encodes: {e}"));
        let digest = artifact
            .digest()
            .unwrap_or_else(|e| panic!("epoch {epoch}'s artifact digests: {e}"));
        let witnessed = self
            .witness
            .sign(NAMESPACE, epoch, digest, at)
            .unwrap_or_else(|e| panic!("the witness signs epoch {epoch}: {e}"));
        let cs = countersign(&self.hsm, OPERATOR_KEY, &witnessed)
            .unwrap_or_else(|e| panic!("the operator countersigns epoch {epoch}: {e}"));
        let checkpoint = self
            .witness
            .checkpoint(NAMESPACE, at)
            .unwrap_or_else(|e| panic!("the witness's checkpoint: {e}"));
        let tree = self.log();
        let inclusion = tree
            .inclusion_proof(witnessed.leaf_index, tree.size())
            .unwrap_or_else(|e| panic!("epoch {epoch}'s inclusion proof: {e}"));
        let bundle = Bundle::assemble(encoded, &witnessed, cs, inclusion, &checkpoint)
            .encode()
            .unwrap_or_else(|e| panic!("epoch {epoch}'s bundle encodes: {e}"));
        self.published.push((artifact, bundle));
        epoch
    }

    /// Retires every epoch through `through` early, at virtual second `now_s`:
    /// the witness signs the retirement, the operator countersigns it, and
    /// services hand it out with every reply from their next reload.
    pub(super) fn retire(&mut self, through: u64, now_s: u64) {
        let mut r = self
            .witness
            .sign_retirement(NAMESPACE, through, UNIX_AT_START + now_s)
            .unwrap_or_else(|e| panic!("the witness retires epochs through {through}: {e}"));
        r.countersign(&self.hsm, OPERATOR_KEY)
            .unwrap_or_else(|e| panic!("the operator countersigns a retirement: {e}"));
        let encoded = r
            .encode()
            .unwrap_or_else(|e| panic!("a retirement encodes: {e}"));
        self.retirements.push((through, encoded));
    }

    fn log(&self) -> vaultfleet_audit::merkle::MerkleTree {
        self.witness.tree(NAMESPACE).cloned().unwrap_or_default()
    }

    /// What a service reloaded now serves for `epoch`: its bundle, the
    /// witness's whole log (for proofs either way) and the retirement, if any.
    pub(super) fn source(&self, epoch: u64) -> BundleSource {
        let i = usize::try_from(epoch.saturating_sub(1)).unwrap_or(usize::MAX);
        let (_, bundle) = self
            .published
            .get(i)
            .unwrap_or_else(|| panic!("epoch {epoch} was published"));
        let source = BundleSource::new(bundle.clone(), self.log())
            .unwrap_or_else(|e| panic!("epoch {epoch}'s bundle source: {e}"));
        match self.retirements.last() {
            Some((_, r)) => source
                .with_retirements(vec![r.clone()])
                .unwrap_or_else(|e| panic!("a retirement served: {e}")),
            None => source,
        }
    }
}
