//! Fleet keys over the air, end to end on one machine: two fleet epochs are
//! created from a running vault fleet's keys, witnessed and countersigned; the
//! fleet serves replies carrying the bundle (and a consistency proof from the
//! checkpoint each request names); a client that pins only the witness and the
//! operator registers and recovers; the fleet rotates to epoch 2 and the client
//! follows, checking that the new checkpoint extends the one it accepted; deployment evidence is written for both epochs and audited.
//!
//! Run: `cargo run --release --example fleet_keys -- [OUT_DIR]`. Then audit the
//! written evidence with the CLI, as the example prints:
//! `cargo run -p vaultfleet-cli -- audit verify OUT_DIR/evidence-2.bin --pins OUT_DIR/pins.txt`.
// The example runs the threaded runtime and reads the wall clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Node, NodeConfig};
use vaultfleet::{ChannelNetwork, FleetConfig, MemLog, MemberSpec, Replica, SoftHsm};
use vaultfleet_audit::fleet::evidence::{
    attest, audit_deployment, certify_device, AuditPins, Ceremony, Evidence,
};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{Bundle, FleetVerifier, Witness, WitnessKey, WitnessKeySpec};
use vaultfleet_vault::{
    BackupVault, BundleSource, KsfParams, VaultClient, VaultClientConfig, VaultEndpoint, VaultKeys,
    VaultServer, VaultService, VaultServiceConfig,
};

const NS: &str = "example.vault.fleet_keys.v1";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fleet keys over the air, end to end on one machine: two epochs witnessed,
/// countersigned, served, followed by a pinned client, and audited.
#[derive(Debug, Parser)]
#[command(name = "fleet_keys")]
struct Options {
    /// Where the keys, the witness and the evidence are written (default: a
    /// `vaultfleet-fleet-keys` folder in the temporary directory).
    out_dir: Option<PathBuf>,
}

/// Logs to stderr, filtered by `RUST_LOG` (warnings and errors when unset).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = Options::parse();
    init_tracing();
    let out = options
        .out_dir
        .unwrap_or_else(|| std::env::temp_dir().join("vaultfleet-fleet-keys"));
    std::fs::create_dir_all(&out)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();

    // A 3-replica vault fleet in 3 datacenters.
    let dcs = ["dc-a", "dc-b", "dc-c"];
    let config = FleetConfig::new(
        (1..=3)
            .map(|id| MemberSpec::voter(id, dcs[id as usize - 1]))
            .collect(),
    );
    let net = ChannelNetwork::new();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let mut log = MemLog::new();
        Replica::bootstrap(&mut log, &BackupVault::new(), &config)?;
        let node = Node::spawn(
            NodeConfig::new(ReplicaConfig::new(id)),
            log,
            BackupVault::new(),
            net.transport(id),
        )?;
        net.register(id, Arc::new(node.handle()));
        nodes.push(node);
    }
    let handles: Vec<_> = nodes.iter().map(Node::handle).collect();
    let world = SoftHsm::new();
    let sealed = VaultKeys::provision(&world)?;
    let mut services = Vec::new();
    let mut replica_keys = BTreeMap::new();
    for id in 1..=3u64 {
        let keys = VaultKeys::open(world.clone(), &sealed, 1, id)?;
        replica_keys.insert(id, (keys.response_public_key()?, keys.opaque_public_key()));
        services.push(Arc::new(VaultService::start(
            VaultServer::new(keys),
            handles.clone(),
            VaultServiceConfig::default(),
        )?));
    }

    // The authorities: the witness (the role Cloudflare plays) and the operator
    // (the role Meta plays), each with its own HSM.
    let witness_hsm = SoftHsm::new();
    let mut witness = Witness::open(
        witness_hsm,
        vec![WitnessKeySpec {
            name: "witness-1".into(),
            not_before: 0,
        }],
        out.join("witness.state"),
    )?;
    let operator = SoftHsm::new();
    let operator_key =
        operator.public_key(operator.key("operator/countersign", KeyKind::Signing)?)?;
    let vendor = SoftHsm::new();
    let vendor_root = vendor.key("vendor/root", KeyKind::Signing)?;
    let officers: Vec<SoftHsm> = (0..3).map(|_| SoftHsm::new()).collect();

    let witness_key = WitnessKey {
        name: "witness-1".into(),
        public_key: witness.public_key("witness-1")?,
        not_before: 0,
    };
    let artifact = |epoch: u64| FleetArtifact {
        fleet_id: "example".into(),
        epoch,
        replicas: replica_keys
            .iter()
            .map(|(&id, (response, opaque))| ReplicaKeys {
                id,
                datacenter: dcs[id as usize - 1].into(),
                response_key: *response,
                transport_key: [epoch as u8; 32],
                opaque_key: *opaque,
            })
            .collect(),
        voters: vec![1, 2, 3],
        learners: vec![],
        not_before: now - 60,
        not_after: now + 30 * 86_400,
    };
    let mut publish =
        |a: &FleetArtifact| -> Result<(BundleSource, Evidence), Box<dyn std::error::Error>> {
            let witnessed = witness.sign(NS, a.epoch, a.digest()?, now)?;
            let cs = countersign(&operator, "operator/countersign", &witnessed)?;
            let tree = witness.tree(NS).ok_or("empty log")?;
            let proof = tree.inclusion_proof(witnessed.leaf_index, tree.size())?;
            // The witness's log travels with the bundle: replies prove from it
            // that the checkpoint extends the one each client last accepted.
            let log = tree.clone();
            let bundle = Bundle::assemble(
                a.encode()?,
                &witnessed,
                cs,
                proof,
                &witness.checkpoint(NS, now)?,
            )
            .encode()?;
            let fw = [7u8; 32];
            let mut attestations = Vec::new();
            for r in &a.replicas {
                let device_hsm = SoftHsm::from_seed(r.id);
                let device = device_hsm.key("device/attestation", KeyKind::Signing)?;
                let cert = certify_device(
                    &vendor,
                    vendor_root,
                    "example-vendor",
                    &format!("hsm-{}", r.id),
                    device_hsm.public_key(device)?,
                )?;
                attestations.push(attest(&device_hsm, device, cert, a, r.id, fw)?);
            }
            let mut ceremony = Ceremony {
                artifact_digest: a.digest()?,
                firmware: a.replicas.iter().map(|r| (r.id, fw)).collect(),
                threshold: 2,
                signatures: vec![],
            };
            let msg = ceremony.signed_bytes()?;
            for (i, o) in officers.iter().enumerate() {
                let k = o.key("officer", KeyKind::Signing)?;
                ceremony
                    .signatures
                    .push((format!("officer-{}", i + 1), o.sign(k, &msg)?));
            }
            Ok((
                BundleSource::new(bundle.clone(), log)?,
                Evidence {
                    bundle,
                    attestations,
                    ceremony,
                },
            ))
        };

    let (bundle1, evidence1) = publish(&artifact(1))?;
    println!(
        "epoch 1 witnessed, countersigned and logged (digest {})",
        hex(&artifact(1).digest()?)
    );
    for s in &services {
        s.serve(bundle1.clone());
    }
    // The client pins only the witness's and the operator's keys.
    let verifier = FleetVerifier::new(NS, vec![witness_key.clone()], operator_key);
    let endpoints: Vec<Arc<dyn VaultEndpoint>> = services
        .iter()
        .map(|s| Arc::clone(s) as Arc<dyn VaultEndpoint>)
        .collect();
    let cfg = VaultClientConfig {
        ksf: KsfParams::RECOMMENDED,
        ..Default::default()
    };
    let client = VaultClient::with_verifier(endpoints, 1, verifier, Arc::new(move || now), cfg)?;
    client.register(b"alice", b"alice's code", b"alice's backup key")?;
    println!(
        "client (no fleet keys pinned) registered alice; the fleet it trusts is epoch {:?}",
        client.fleet_epoch()
    );

    let (bundle2, evidence2) = publish(&artifact(2))?;
    for s in &services {
        s.serve(bundle2.clone());
    }
    let secret = client.recover(b"alice", b"alice's code")?;
    println!(
        "rotated: recovered {:?} through epoch {:?}",
        String::from_utf8_lossy(&secret),
        client.fleet_epoch()
    );

    // Deployment evidence for both epochs, and the auditor's pins.
    std::fs::write(out.join("evidence-1.bin"), evidence1.encode()?)?;
    std::fs::write(out.join("evidence-2.bin"), evidence2.encode()?)?;
    let mut pins = format!(
        "namespace {NS}\nwitness witness-1 0 {}\noperator {}\nvendor example-vendor {}\n",
        hex(&witness_key.public_key),
        hex(&operator_key),
        hex(&vendor.public_key(vendor_root)?)
    );
    let mut audit = AuditPins {
        vendor_roots: vec![("example-vendor".into(), vendor.public_key(vendor_root)?)],
        officers: vec![],
        threshold: 2,
    };
    for (i, o) in officers.iter().enumerate() {
        let k = o.public_key(o.key("officer", KeyKind::Signing)?)?;
        pins.push_str(&format!("officer officer-{} {}\n", i + 1, hex(&k)));
        audit.officers.push((format!("officer-{}", i + 1), k));
    }
    pins.push_str("threshold 2\n");
    std::fs::write(out.join("pins.txt"), pins)?;
    for step in audit_deployment(&evidence2, &artifact(2), &audit) {
        println!(
            "  [{}] {}",
            if step.outcome.is_ok() { "pass" } else { "FAIL" },
            step.what
        );
    }
    println!("\nevidence written to {}; audit it with:", out.display());
    println!(
        "  cargo run -p vaultfleet-cli -- audit verify {}/evidence-2.bin --pins {}/pins.txt",
        out.display(),
        out.display()
    );
    println!(
        "  cargo run -p vaultfleet-cli -- audit diff {0}/evidence-1.bin {0}/evidence-2.bin",
        out.display()
    );
    for n in nodes {
        n.shutdown()?;
    }
    Ok(())
}
