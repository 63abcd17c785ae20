//! `vaultfleet`: the operator's and the auditor's command.
//!
//! ```text
//! vaultfleet fleet create --dir FLEET --fleet-id ID --epoch N --replicas 1:dc-a,2:dc-b,3:dc-c
//! vaultfleet witness sign --dir WITNESS --namespace NS --artifact FLEET/epoch-N/artifact.bin
//! vaultfleet operator countersign --dir FLEET --epoch N --witness-dir WITNESS --namespace NS
//! vaultfleet evidence assemble --dir FLEET --epoch N --witness-dir WITNESS --namespace NS --out evidence-N.bin
//! vaultfleet audit pins --dir FLEET --witness-dir WITNESS --namespace NS --out pins.txt
//! vaultfleet audit verify evidence-N.bin --pins pins.txt [--replica ID] [--now T]
//! vaultfleet audit log --witness-dir WITNESS --namespace NS --pins pins.txt
//! vaultfleet audit diff evidence-1.bin evidence-2.bin
//! ```
//!
//! The witness's log in public (C2SP tlog-tiles, tlog-witness cosigners) is
//! `witness serve|vkey|submit`, `cosigner init|serve`, `audit log --url` and
//! `audit bundle` (see `tlog_cmd`).
//!
//! Every subcommand has `--help`. Keys live in soft HSMs kept in files (`*.hsm`)
//! under the directories given: the fleet's security world, one HSM per replica
//! (its device attestation key and transport key), a stand-in vendor root, the
//! ceremony officers, the operator's countersigning key, and the witness. A
//! production deployment points the same flow at real HSMs through the `Hsm`
//! trait; docs/audit.md says what each stand-in replaces.
//!
//! Exit codes: 0 done (or every audit check passed), 1 an audit refused, 2 an
//! error (printed with its chain of causes) or a usage error. Logs go to stderr,
//! filtered by `RUST_LOG` (warnings and errors when unset).
// A command-line tool reads the wall clock for timestamps.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod admin_cmd;
mod error;
mod node_cmd;
mod testbed_cmd;
mod tlog_cmd;
mod vault_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vaultfleet::hsm::{verify_signature, Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::evidence::{
    attest, audit_deployment, certify_device, Attestation, Ceremony, Evidence,
};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::merkle::verify_consistency;
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{
    Bundle, Checkpoint, FleetVerifier, MerkleTree, NoteVerifier, SignedNote, Witness,
    WitnessKeySpec,
};
use vaultfleet_vault::VaultKeys;
use zeroize::Zeroizing;

use error::CliError;
use vaultfleet_audit::pins::Pins;

type Res<T> = Result<T, CliError>;

/// Create and witness fleet keys, assemble deployment evidence, and audit it.
#[derive(Debug, Parser)]
#[command(name = "vaultfleet", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The fleet's keys and artifacts.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// The transparency witness.
    #[command(subcommand)]
    Witness(WitnessCommand),
    /// An independent witness that cosigns the log's checkpoints (C2SP
    /// tlog-witness).
    #[command(subcommand)]
    Cosigner(CosignerCommand),
    /// The operator's countersignature.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Deployment evidence.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// What an auditor runs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run a replica of the vault fleet (the node daemon).
    #[command(subcommand)]
    Node(node_cmd::NodeCommand),
    /// The operator's calls to running nodes (Noise IK, a pinned admin key).
    #[command(subcommand)]
    Admin(admin_cmd::AdminCommand),
    /// A whole fleet of node processes on this machine's loopback, for trying
    /// the daemon out.
    #[command(subcommand)]
    Testbed(testbed_cmd::TestbedCommand),
    /// A user's device: register or recover a backup key over the network.
    #[command(subcommand)]
    Vault(vault_cmd::VaultCommand),
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Create (or extend) a fleet's security world and write an epoch's artifact,
    /// attestations and key ceremony.
    Create(FleetCreate),
}

#[derive(Debug, Subcommand)]
enum WitnessCommand {
    /// Witness an epoch's artifact: log it, sign it, publish a checkpoint.
    Sign(WitnessSign),
    /// Serve the witness's log over HTTP (C2SP tlog-tiles), take the
    /// operator's signed submissions, and collect cosignatures.
    Serve(tlog_cmd::WitnessServe),
    /// Print the witness's note verifier keys (what cosigners and auditors pin).
    Vkey(tlog_cmd::WitnessVkey),
    /// Submit an epoch to a served witness, signed by the operator's key, and
    /// countersign the witness's signature.
    Submit(tlog_cmd::WitnessSubmit),
}

#[derive(Debug, Subcommand)]
enum CosignerCommand {
    /// Create the cosigner's key and print its verifier key.
    Init(tlog_cmd::CosignerInit),
    /// Serve C2SP tlog-witness `add-checkpoint` for the logs it follows.
    Serve(tlog_cmd::CosignerServe),
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Countersign the witness's signature on an epoch.
    Countersign(OperatorCountersign),
}

#[derive(Debug, Subcommand)]
enum EvidenceCommand {
    /// Assemble an epoch's validation bundle and deployment evidence.
    Assemble(EvidenceAssemble),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Write the keys an auditor pins.
    Pins(AuditPinsArgs),
    /// Verify deployment evidence against the pins (exit 1 if a check fails).
    Verify(AuditVerify),
    /// Verify the witness's whole log and every checkpoint (exit 1 if one fails).
    Log(AuditLog),
    /// Verify a bundle a client received and that it is in the served log (no
    /// split view; exit 1 if not).
    Bundle(tlog_cmd::AuditBundle),
    /// Show what changed between two artifacts (or evidence files).
    Diff(AuditDiff),
}

#[derive(Debug, Args)]
struct FleetCreate {
    /// The fleet's folder (its HSM files and epochs).
    #[arg(long)]
    dir: PathBuf,
    /// The fleet's name.
    #[arg(long)]
    fleet_id: String,
    /// The epoch to create.
    #[arg(long)]
    epoch: u64,
    /// Start of validity, Unix seconds (default now).
    #[arg(long, value_name = "T")]
    not_before: Option<u64>,
    /// Days of validity.
    #[arg(long, default_value_t = 365)]
    days: u64,
    /// The replicas, `ID:DATACENTER,...`.
    #[arg(long, value_name = "ID:DC,...", value_parser = replica_list)]
    replicas: ReplicaList,
}

#[derive(Debug, Args)]
struct WitnessSign {
    /// The witness's folder.
    #[arg(long)]
    dir: PathBuf,
    /// The log's namespace.
    #[arg(long)]
    namespace: String,
    /// The epoch's `artifact.bin`.
    #[arg(long)]
    artifact: PathBuf,
    /// Time of the signature, Unix seconds (default now).
    #[arg(long, value_name = "T")]
    time: Option<u64>,
    /// The witness's signing keys, `NAME[@NOT_BEFORE]`, repeatable; replaces the
    /// saved list (default: the saved list, or `witness-1`).
    #[arg(long = "key", value_name = "NAME[@NOT_BEFORE]", value_parser = witness_key)]
    keys: Vec<WitnessKeySpec>,
}

#[derive(Debug, Args)]
struct OperatorCountersign {
    /// The fleet's folder.
    #[arg(long)]
    dir: PathBuf,
    /// The epoch.
    #[arg(long)]
    epoch: u64,
    /// The witness's folder.
    #[arg(long)]
    witness_dir: PathBuf,
    /// The log's namespace.
    #[arg(long)]
    namespace: String,
}

#[derive(Debug, Args)]
struct EvidenceAssemble {
    /// The fleet's folder.
    #[arg(long)]
    dir: PathBuf,
    /// The epoch.
    #[arg(long)]
    epoch: u64,
    /// The witness's folder.
    #[arg(
        long,
        required_unless_present = "witness_url",
        conflicts_with = "witness_url"
    )]
    witness_dir: Option<PathBuf>,
    /// The served witness log instead (its cosigned checkpoint goes into the bundle).
    #[arg(long, value_name = "URL", requires = "witness_vkeys")]
    witness_url: Option<String>,
    /// With --witness-url: the witness's pinned note key (as `witness vkey`
    /// prints it), repeatable; the served checkpoint must be signed by one.
    #[arg(long = "witness-vkey", value_name = "VKEY")]
    witness_vkeys: Vec<String>,
    /// The log's namespace.
    #[arg(long)]
    namespace: String,
    /// Time of the checkpoint, Unix seconds (default now).
    #[arg(long, value_name = "T")]
    time: Option<u64>,
    /// Where to write the evidence.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct AuditPinsArgs {
    /// The fleet's folder.
    #[arg(long)]
    dir: PathBuf,
    /// A cosigner's verifier key (`cosigner init` prints it), repeatable.
    #[arg(long = "cosigner", value_name = "VKEY")]
    cosigners: Vec<String>,
    /// How many of the cosigners must cosign a bundle's checkpoint.
    #[arg(long, default_value_t = 0)]
    cosigners_required: usize,
    /// The witness's folder.
    #[arg(long)]
    witness_dir: PathBuf,
    /// The log's namespace.
    #[arg(long)]
    namespace: String,
    /// Where to write the pins.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct AuditVerify {
    /// The deployment evidence.
    evidence: PathBuf,
    /// The pinned keys.
    #[arg(long)]
    pins: PathBuf,
    /// The replica whose reply carried the bundle (default: the artifact's first).
    #[arg(long)]
    replica: Option<u64>,
    /// The time to verify at, Unix seconds (default now).
    #[arg(long, value_name = "T")]
    now: Option<u64>,
}

#[derive(Debug, Args)]
struct AuditLog {
    /// The witness's folder (its published log and checkpoints; no HSM needed).
    #[arg(long, required_unless_present = "url", conflicts_with = "url")]
    witness_dir: Option<PathBuf>,
    /// The served log instead (C2SP tlog-tiles over HTTP).
    #[arg(long)]
    url: Option<String>,
    /// With --url: where the checkpoints seen are kept, so the next run checks
    /// that the log still extends them.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "vaultfleet-audit-checkpoints"
    )]
    keep: PathBuf,
    /// With --url: the most entries the served log may hold.
    #[arg(long, default_value_t = vaultfleet_tlog::walk::ENTRIES_MAX)]
    max_entries: u64,
    /// The log's namespace (default: the pins').
    #[arg(long)]
    namespace: Option<String>,
    /// The pinned keys.
    #[arg(long)]
    pins: PathBuf,
    /// An evidence file whose bundle's checkpoint to check too; repeatable.
    #[arg(long = "evidence", value_name = "FILE")]
    evidence: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct AuditDiff {
    /// The earlier artifact or evidence.
    a: PathBuf,
    /// The later artifact or evidence.
    b: PathBuf,
}

/// `ID:DATACENTER` pairs.
#[derive(Clone, Debug)]
struct ReplicaList(Vec<(u64, String)>);

fn replica_list(s: &str) -> Result<ReplicaList, String> {
    s.split(',')
        .map(|spec| {
            let (id, dc) = spec
                .split_once(':')
                .filter(|(_, dc)| !dc.is_empty())
                .ok_or_else(|| format!("{spec:?} is not ID:DATACENTER"))?;
            let id = id
                .parse()
                .map_err(|_| format!("replica id {id:?} is not a number"))?;
            Ok((id, dc.to_string()))
        })
        .collect::<Result<_, String>>()
        .map(ReplicaList)
}

fn witness_key(spec: &str) -> Result<WitnessKeySpec, String> {
    let (name, nb) = spec.split_once('@').unwrap_or((spec, "0"));
    if name.is_empty() {
        return Err("the key needs a name".into());
    }
    let not_before = nb
        .parse()
        .map_err(|_| format!("not_before {nb:?} is not a number"))?;
    Ok(WitnessKeySpec {
        name: name.to_string(),
        not_before,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    bytes?.try_into().ok()
}

fn hsm(path: &Path) -> Res<SoftHsm> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(CliError::io(d))?;
    }
    SoftHsm::open(path).map_err(|source| CliError::HsmFile {
        path: path.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Res<Vec<u8>> {
    std::fs::read(path).map_err(CliError::io(path))
}

fn write(path: &Path, bytes: &[u8]) -> Res<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(CliError::io(d))?;
    }
    std::fs::write(path, bytes).map_err(CliError::io(path))
}

fn public(h: &SoftHsm, label: &str) -> Res<[u8; 32]> {
    let k = h
        .key(label, KeyKind::Signing)
        .map_err(CliError::hsm("find a signing key"))?;
    h.public_key(k).map_err(CliError::hsm("read a public key"))
}

/// The firmware hash an attestation reports: SoftHSM2's library when installed,
/// else the in-process soft HSM's version string.
fn firmware() -> [u8; 32] {
    use sha2::Digest;
    let lib = std::fs::read("/usr/lib/softhsm/libsofthsm2.so").unwrap_or_else(|_| {
        format!("vaultfleet SoftHsm {}", env!("CARGO_PKG_VERSION")).into_bytes()
    });
    sha2::Sha256::digest(lib).into()
}

const OFFICERS: usize = 3;
const THRESHOLD: u8 = 2;
const VENDOR: &str = "softhsm-vendor-root";

/// The witness's key list: `keys` when given (saved for the next runs), else the
/// saved list, else `witness-1` from time 0.
fn witness_key_list(dir: &Path, keys: &[WitnessKeySpec]) -> Res<Vec<WitnessKeySpec>> {
    let keys_file = dir.join("keys.txt");
    if !keys.is_empty() {
        let text: String = keys
            .iter()
            .map(|k| format!("{} {}\n", k.name, k.not_before))
            .collect();
        write(&keys_file, text.as_bytes())?;
        return Ok(keys.to_vec());
    }
    match std::fs::read_to_string(&keys_file) {
        Ok(text) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                l.split_once(' ')
                    .and_then(|(n, t)| {
                        Some(WitnessKeySpec {
                            name: n.into(),
                            not_before: t.trim().parse().ok()?,
                        })
                    })
                    .ok_or_else(|| CliError::KeysFile {
                        path: keys_file.clone(),
                        line: i + 1,
                    })
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write(&keys_file, b"witness-1 0\n")?;
            Ok(vec![WitnessKeySpec {
                name: "witness-1".into(),
                not_before: 0,
            }])
        }
        Err(e) => Err(CliError::io(keys_file)(e)),
    }
}

fn open_witness(dir: &Path, keys: &[WitnessKeySpec]) -> Res<Witness<SoftHsm>> {
    let keys = witness_key_list(dir, keys)?;
    Ok(Witness::open(
        hsm(&dir.join("witness.hsm"))?,
        keys,
        dir.join("witness.state"),
    )?)
}

/// Replica `id`'s X25519 transport public key: its secret is drawn from the
/// replica's HSM once and kept sealed by it (for the planned Noise transport).
fn transport_key(dir: &Path, id: u64) -> Res<[u8; 32]> {
    let rh = hsm(&dir.join(format!("replica-{id}.hsm")))?;
    let seal_key = rh
        .key("transport/seal", KeyKind::Aead)
        .map_err(CliError::hsm("find the transport sealing key"))?;
    let tpath = dir.join(format!("replica-{id}.transport"));
    // The secret lives only in wiped memory: `Zeroizing` here, and x25519-dalek's
    // `StaticSecret` (built with its `zeroize` feature) wipes itself on drop.
    let secret: Zeroizing<[u8; 32]> = match std::fs::read(&tpath) {
        Ok(sealed) => {
            let plain = rh
                .unseal(seal_key, b"x25519", &sealed)
                .map_err(CliError::hsm("unseal the transport key"))?;
            let mut s = Zeroizing::new([0u8; 32]);
            match plain.get(..32) {
                Some(bytes) if plain.len() == 32 => s.copy_from_slice(bytes),
                _ => return Err(CliError::TransportKey { path: tpath }),
            }
            s
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut s = Zeroizing::new([0u8; 32]);
            rh.random(s.as_mut_slice())
                .map_err(CliError::hsm("draw the transport key"))?;
            let sealed = rh
                .seal(seal_key, b"x25519", s.as_slice())
                .map_err(CliError::hsm("seal the transport key"))?;
            write(&tpath, &sealed)?;
            s
        }
        Err(e) => return Err(CliError::io(tpath)(e)),
    };
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret));
    Ok(public.to_bytes())
}

/// The keys of every replica in `replicas`, from the security world `world`.
fn replica_keys(dir: &Path, world: &SoftHsm, replicas: &ReplicaList) -> Res<Vec<ReplicaKeys>> {
    let sealed_path = dir.join("opaque-setup.sealed");
    let sealed = match std::fs::read(&sealed_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = VaultKeys::provision(world).map_err(CliError::VaultKeys)?;
            write(&sealed_path, &s)?;
            s
        }
        Err(e) => return Err(CliError::io(sealed_path)(e)),
    };
    let mut out = Vec::new();
    for (id, dc) in &replicas.0 {
        let keys = VaultKeys::open(world.clone(), &sealed, 1, *id).map_err(CliError::VaultKeys)?;
        out.push(ReplicaKeys {
            id: *id,
            datacenter: dc.clone(),
            response_key: keys.response_public_key().map_err(CliError::VaultKeys)?,
            transport_key: transport_key(dir, *id)?,
            opaque_key: keys.opaque_public_key(),
        });
    }
    out.sort_by_key(|r| r.id);
    Ok(out)
}

/// Each replica's HSM attests its keys with a device key its vendor certified.
fn attestations(dir: &Path, artifact: &FleetArtifact, fw: [u8; 32]) -> Res<Vec<Attestation>> {
    let vendor = hsm(&dir.join("vendor.hsm"))?;
    let root = vendor
        .key("vendor/root", KeyKind::Signing)
        .map_err(CliError::hsm("find the vendor root key"))?;
    let mut attestations = Vec::new();
    for r in &artifact.replicas {
        let failed = |source| CliError::Attestation {
            replica: r.id,
            source,
        };
        let rh = hsm(&dir.join(format!("replica-{}.hsm", r.id)))?;
        let device = rh
            .key("device/attestation", KeyKind::Signing)
            .map_err(CliError::hsm("find the device attestation key"))?;
        let device_key = rh
            .public_key(device)
            .map_err(CliError::hsm("read the device attestation key"))?;
        let name = format!("softhsm2 replica-{}", r.id);
        let cert = certify_device(&vendor, root, VENDOR, &name, device_key).map_err(failed)?;
        attestations.push(attest(&rh, device, cert, artifact, r.id, fw).map_err(failed)?);
    }
    Ok(attestations)
}

/// The key ceremony: the officers sign the artifact's digest and the firmware hashes.
fn ceremony(dir: &Path, artifact: &FleetArtifact, fw: [u8; 32]) -> Res<Ceremony> {
    let mut ceremony = Ceremony {
        artifact_digest: artifact.digest()?,
        firmware: artifact.replicas.iter().map(|r| (r.id, fw)).collect(),
        threshold: THRESHOLD,
        signatures: Vec::new(),
    };
    let msg = ceremony
        .signed_bytes()
        .map_err(CliError::encode("the ceremony statement"))?;
    for i in 1..=OFFICERS {
        let oh = hsm(&dir.join(format!("officer-{i}.hsm")))?;
        let k = oh
            .key("officer", KeyKind::Signing)
            .map_err(CliError::hsm("find an officer's key"))?;
        let signature = oh
            .sign(k, &msg)
            .map_err(CliError::hsm("sign as an officer"))?;
        ceremony
            .signatures
            .push((format!("officer-{i}"), signature));
    }
    Ok(ceremony)
}

fn fleet_create(a: &FleetCreate) -> Res<()> {
    let dir = &a.dir;
    let world = hsm(&dir.join("world.hsm"))?;
    let replicas = replica_keys(dir, &world, &a.replicas)?;
    let voters = replicas.iter().map(|r| r.id).collect();
    let not_before = a.not_before.unwrap_or_else(now);
    let artifact = FleetArtifact {
        fleet_id: a.fleet_id.clone(),
        epoch: a.epoch,
        replicas,
        voters,
        learners: vec![],
        not_before,
        not_after: not_before.saturating_add(a.days.saturating_mul(86_400)),
    };
    let bytes = artifact.encode()?;
    let edir = dir.join(format!("epoch-{}", a.epoch));
    write(&edir.join("artifact.bin"), &bytes)?;
    let digest = artifact.digest()?;
    let fw = firmware();
    let partial = Evidence {
        bundle: Vec::new(),
        attestations: attestations(dir, &artifact, fw)?,
        ceremony: ceremony(dir, &artifact, fw)?,
    };
    let encoded = partial
        .encode()
        .map_err(CliError::encode("the deployment evidence"))?;
    write(&edir.join("deployment.bin"), &encoded)?;
    println!(
        "fleet {} epoch {}: {} replicas, digest {}",
        a.fleet_id,
        a.epoch,
        artifact.replicas.len(),
        hex(&digest)
    );
    println!("wrote {}", edir.display());
    Ok(())
}

fn witness_sign(a: &WitnessSign) -> Res<()> {
    let ns = &a.namespace;
    let artifact = FleetArtifact::decode(&read(&a.artifact)?)?;
    let time = a.time.unwrap_or_else(now);
    let mut w = open_witness(&a.dir, &a.keys)?;
    let signed = w
        .sign(ns, artifact.epoch, artifact.digest()?, time)
        .map_err(CliError::WitnessRefused)?;
    let cp = w.checkpoint(ns, time)?;
    let size = w.tree(ns).map_or(0, |t| t.size());
    // Never overwrite a published checkpoint: a second root for a size is
    // evidence of a fork and must stay visible.
    let root = Checkpoint::parse(&cp.text)?.root;
    let name = format!("{ns}-{size:012}-{}.txt", &hex(&root)[..16]);
    write(
        &a.dir.join("checkpoints").join(name),
        cp.encode().as_bytes(),
    )?;
    println!(
        "witnessed {ns} epoch {} as leaf {} with key {}; checkpoint size {size}",
        signed.statement.epoch, signed.leaf_index, signed.key
    );
    Ok(())
}

fn operator_countersign(a: &OperatorCountersign) -> Res<()> {
    let (epoch, ns) = (a.epoch, &a.namespace);
    let w = open_witness(&a.witness_dir, &[])?;
    let artifact =
        FleetArtifact::decode(&read(&a.dir.join(format!("epoch-{epoch}/artifact.bin")))?)?;
    let digest = artifact.digest()?;
    let entry = w
        .entries(ns)
        .iter()
        .find(|e| e.statement.epoch == epoch)
        .ok_or_else(|| CliError::NotWitnessed {
            epoch,
            namespace: ns.clone(),
        })?;
    if entry.statement.digest != digest {
        return Err(CliError::DigestMismatch { epoch });
    }
    let op = hsm(&a.dir.join("operator.hsm"))?;
    let cs = countersign(&op, "operator/countersign", entry)?;
    write(
        &a.dir.join(format!("epoch-{epoch}/countersignature.bin")),
        &cs,
    )?;
    println!(
        "countersigned witness signature by {} on epoch {epoch}",
        entry.key
    );
    Ok(())
}

fn evidence_assemble(a: &EvidenceAssemble) -> Res<()> {
    let (epoch, ns) = (a.epoch, &a.namespace);
    let time = a.time.unwrap_or_else(now);
    let edir = a.dir.join(format!("epoch-{epoch}"));
    let artifact = read(&edir.join("artifact.bin"))?;
    let cs_path = edir.join("countersignature.bin");
    let cs: [u8; 64] = read(&cs_path)?
        .try_into()
        .map_err(|_| CliError::Countersignature { path: cs_path })?;
    let (entry, proof, cp, size) = match (&a.witness_dir, &a.witness_url) {
        (_, Some(url)) => {
            let digest = FleetArtifact::decode(&artifact)?.digest()?;
            tlog_cmd::assemble_from_url(url, &a.witness_vkeys, ns, epoch, digest)?
        }
        (Some(dir), None) => {
            let w = open_witness(dir, &[])?;
            let entry = w
                .entries(ns)
                .iter()
                .find(|e| e.statement.epoch == epoch)
                .cloned()
                .ok_or_else(|| CliError::NotWitnessed {
                    epoch,
                    namespace: ns.clone(),
                })?;
            let tree = w.tree(ns).ok_or_else(|| CliError::EmptyLog {
                namespace: ns.clone(),
            })?;
            let proof = tree.inclusion_proof(entry.leaf_index, tree.size())?;
            (entry, proof, w.checkpoint(ns, time)?, tree.size())
        }
        (None, None) => unreachable!("clap requires --witness-dir or --witness-url"),
    };
    let bundle = Bundle::assemble(artifact, &entry, cs, proof, &cp);
    let mut evidence = read_evidence(&edir.join("deployment.bin"))?;
    evidence.bundle = bundle
        .encode()
        .map_err(CliError::encode("the validation bundle"))?;
    let encoded = evidence
        .encode()
        .map_err(CliError::encode("the deployment evidence"))?;
    write(&a.out, &encoded)?;
    println!(
        "wrote {} (epoch {epoch}, checkpoint size {size})",
        a.out.display(),
    );
    Ok(())
}

fn read_evidence(path: &Path) -> Res<Evidence> {
    Evidence::decode(&read(path)?).map_err(|source| CliError::Evidence {
        path: path.to_path_buf(),
        source,
    })
}

fn audit_pins(a: &AuditPinsArgs) -> Res<()> {
    let dir = &a.dir;
    let w = open_witness(&a.witness_dir, &[])?;
    let mut text = format!("namespace {}\n", a.namespace);
    for k in w.keys() {
        let pk = w.public_key(&k.name)?;
        text.push_str(&format!(
            "witness {} {} {}\n",
            k.name,
            k.not_before,
            hex(&pk)
        ));
    }
    let operator = public(&hsm(&dir.join("operator.hsm"))?, "operator/countersign")?;
    text.push_str(&format!("operator {}\n", hex(&operator)));
    let vendor = public(&hsm(&dir.join("vendor.hsm"))?, "vendor/root")?;
    text.push_str(&format!("vendor {VENDOR} {}\n", hex(&vendor)));
    for i in 1..=OFFICERS {
        let officer = public(&hsm(&dir.join(format!("officer-{i}.hsm")))?, "officer")?;
        text.push_str(&format!("officer officer-{i} {}\n", hex(&officer)));
    }
    text.push_str(&format!("threshold {THRESHOLD}\n"));
    if a.cosigners.is_empty() != (a.cosigners_required == 0)
        || a.cosigners_required > a.cosigners.len()
    {
        return Err(CliError::CosignersRequired {
            required: a.cosigners_required,
            listed: a.cosigners.len(),
        });
    }
    for c in &a.cosigners {
        let v = NoteVerifier::parse_vkey(c).map_err(|source| CliError::Vkey {
            vkey: c.clone(),
            source,
        })?;
        text.push_str(&format!("cosigner {} {}\n", v.name, hex(&v.public_key)));
    }
    if a.cosigners_required > 0 {
        text.push_str(&format!("cosigners {}\n", a.cosigners_required));
    }
    write(&a.out, text.as_bytes())?;
    println!(
        "wrote {}: the keys an auditor pins (publish them out of band)",
        a.out.display()
    );
    Ok(())
}

/// The client's verifier from the pins: the witness and operator keys, and
/// the cosigners when the pins require some.
fn verifier_from_pins(pins: &Pins) -> Res<FleetVerifier> {
    let v = FleetVerifier::new(&pins.namespace, pins.witness.clone(), pins.operator);
    if pins.cosigners_required == 0 {
        return Ok(v);
    }
    v.require_cosigners(pins.cosigners_required, pins.cosigners.clone())
        .map_err(CliError::CosignerPins)
}

fn read_pins(path: &Path) -> Res<Pins> {
    let text = std::fs::read_to_string(path).map_err(CliError::io(path))?;
    Pins::parse(&text).map_err(|source| CliError::Pins {
        path: path.to_path_buf(),
        source,
    })
}

fn report(ok: bool, what: &str, detail: &str) -> bool {
    println!("[{}] {what}: {detail}", if ok { "pass" } else { "FAIL" });
    ok
}

fn audit_verify(a: &AuditVerify) -> Res<bool> {
    let pins = read_pins(&a.pins)?;
    let now = a.now.unwrap_or_else(now);
    let evidence = match Evidence::decode(&read(&a.evidence)?) {
        Ok(e) => e,
        Err(e) => return Ok(report(false, "decode evidence", &e.to_string())),
    };
    let mut all = report(
        true,
        "decode evidence",
        &format!(
            "{} attestations, {} ceremony signatures",
            evidence.attestations.len(),
            evidence.ceremony.signatures.len()
        ),
    );
    let mut verifier = verifier_from_pins(&pins)?;
    let artifact = match FleetArtifact::decode(&Bundle::decode(&evidence.bundle)?.artifact) {
        Ok(a) => a,
        Err(e) => return Ok(report(false, "fleet artifact", &e.to_string())),
    };
    let replica = match a.replica {
        Some(r) => r,
        None => artifact.replicas.first().ok_or(CliError::NoReplica)?.id,
    };
    match verifier.verify(&evidence.bundle, now, replica) {
        Ok(a) => {
            all &= report(true, "validation bundle", &format!(
                "digest, witness signature, operator countersignature, checkpoint signature, inclusion proof, epoch {}, validity window and replica {replica} all hold",
                a.epoch
            ));
        }
        Err(e) => all &= report(false, "validation bundle", &e.to_string()),
    }
    for step in audit_deployment(&evidence, &artifact, &pins.audit) {
        all &= match &step.outcome {
            Ok(d) => report(true, &step.what, d),
            Err(e) => report(false, &step.what, &e.to_string()),
        };
    }
    println!(
        "{}",
        if all {
            "evidence verified: every check passed"
        } else {
            "evidence REFUSED"
        }
    );
    Ok(all)
}

/// Checks the witness's log of `ns` (from its state file or fetched from the
/// served log): every entry signed by a pinned key, epochs in order. Returns
/// the rebuilt tree and whether every entry passed.
fn check_entries(
    entries: &[vaultfleet_audit::Witnessed],
    ns: &str,
    pins: &Pins,
) -> Res<(MerkleTree, bool)> {
    let mut all = true;
    let mut tree = MerkleTree::new();
    let mut last_epoch = 0;
    for e in entries.iter().filter(|e| e.statement.namespace == ns) {
        let key = pins.witness.iter().find(|k| k.name == e.key);
        let signed = key.is_some_and(|k| {
            e.statement.timestamp >= k.not_before
                && e.statement
                    .signed_bytes()
                    .is_ok_and(|m| verify_signature(&k.public_key, &m, &e.signature))
        });
        let in_order = e.statement.epoch == last_epoch + 1;
        last_epoch = e.statement.epoch;
        all &= report(
            signed && in_order,
            &format!("epoch {} (leaf {})", e.statement.epoch, e.leaf_index),
            &format!(
                "digest {} signed by {} at {}{}{}",
                &hex(&e.statement.digest)[..16],
                e.key,
                e.statement.timestamp,
                if signed {
                    ""
                } else {
                    "; SIGNATURE DOES NOT VERIFY under the pinned key"
                },
                if in_order { "" } else { "; EPOCH OUT OF ORDER" }
            ),
        );
        let leaf = vaultfleet_audit::witness::leaf_bytes(&e.statement, &e.key, &e.signature)
            .map_err(CliError::encode("a log leaf"))?;
        tree.append(&leaf);
    }
    Ok((tree, all))
}

/// Checkpoints of `ns`: the witness's published ones, plus any collected
/// elsewhere (from clients, mirrors, or the bundles in evidence files).
fn collect_checkpoints(wdir: &Path, ns: &str, evidence: &[PathBuf]) -> Res<Vec<(String, String)>> {
    let mut notes: Vec<(String, String)> = std::fs::read_dir(wdir.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{ns}-")))
                })
                .filter_map(|p| Some((p.display().to_string(), std::fs::read_to_string(&p).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    for path in evidence {
        let e = read_evidence(path)?;
        let b = Bundle::decode(&e.bundle)?;
        notes.push((format!("bundle in {}", path.display()), b.checkpoint));
    }
    Ok(notes)
}

/// Parses `text` as a checkpoint signed by a pinned witness key.
fn pinned_checkpoint(text: &str, pins: &Pins) -> Result<Checkpoint, String> {
    let n = SignedNote::parse(text).map_err(|e| e.to_string())?;
    let signed = pins
        .witness
        .iter()
        .any(|k| NoteVerifier::ed25519(&k.name, k.public_key).is_ok_and(|v| v.verify(&n).is_ok()));
    if !signed {
        return Err("not signed by a pinned witness key".to_string());
    }
    Checkpoint::parse(&n.text).map_err(|e| e.to_string())
}

/// Checks every checkpoint against the rebuilt `tree`: no two roots for one size,
/// each root the log's at its size, each later one an extension of the earlier.
fn check_checkpoints(mut seen: Vec<(Checkpoint, String)>, tree: &MerkleTree) -> bool {
    let mut all = true;
    seen.sort_by_key(|(cp, _)| cp.size);
    for w in seen.windows(2) {
        if w[0].0.size == w[1].0.size && w[0].0.root != w[1].0.root {
            all &= report(
                false,
                &format!("checkpoints of size {}", w[0].0.size),
                &format!(
                    "two different roots ({} and {}): the log forked",
                    w[0].1, w[1].1
                ),
            );
        }
    }
    seen.dedup_by(|a, b| a.0 == b.0);
    for (cp, source) in &seen {
        let ok = tree.root_at(cp.size).ok() == Some(cp.root);
        all &= report(
            ok,
            &format!("checkpoint size {} ({source})", cp.size),
            if ok {
                "signed, and the log has exactly this root at this size"
            } else {
                "the log no longer has this root at this size: it was rewritten"
            },
        );
    }
    for w in seen.windows(2) {
        let (a, b) = (&w[0].0, &w[1].0);
        if a.size == b.size {
            continue;
        }
        let ok = tree
            .consistency_proof(a.size, b.size)
            .is_ok_and(|p| verify_consistency(a.size, b.size, &p, &a.root, &b.root).is_ok());
        all &= report(
            ok,
            &format!("consistency {} -> {}", a.size, b.size),
            if ok {
                "the later checkpoint extends the earlier one"
            } else {
                "not an extension: the log was rewritten between them"
            },
        );
    }
    all
}

fn audit_log(a: &AuditLog) -> Res<bool> {
    let pins = read_pins(&a.pins)?;
    let ns = a
        .namespace
        .clone()
        .unwrap_or_else(|| pins.namespace.clone());
    let wdir = match (&a.witness_dir, &a.url) {
        (_, Some(url)) => {
            return tlog_cmd::audit_log_url(url, &ns, &pins, &a.keep, &a.evidence, a.max_entries)
        }
        (Some(dir), None) => dir,
        (None, None) => unreachable!("clap requires --witness-dir or --url"),
    };
    // The log as the witness publishes it; read without its HSM.
    let state = wdir.join("witness.state");
    let text = std::fs::read_to_string(&state).map_err(CliError::io(&state))?;
    let entries = vaultfleet_audit::witness::parse_log(&text).map_err(|source| CliError::Log {
        path: state,
        source,
    })?;
    let (tree, mut all) = check_entries(&entries, &ns, &pins)?;
    let mut seen: Vec<(Checkpoint, String)> = Vec::new();
    for (source, text) in collect_checkpoints(wdir, &ns, &a.evidence)? {
        match pinned_checkpoint(&text, &pins) {
            Ok(cp) if cp.origin == ns => seen.push((cp, source)),
            Ok(_) => {}
            Err(e) => all &= report(false, &format!("checkpoint {source}"), &e),
        }
    }
    all &= check_checkpoints(seen, &tree);
    println!("{}", if all { "log verified" } else { "log REFUSED" });
    Ok(all)
}

fn artifact_of(path: &Path) -> Res<FleetArtifact> {
    let bytes = read(path)?;
    if let Ok(a) = FleetArtifact::decode(&bytes) {
        return Ok(a);
    }
    let e = Evidence::decode(&bytes).map_err(|source| CliError::NotAnArtifact {
        path: path.to_path_buf(),
        source,
    })?;
    let b = Bundle::decode(&e.bundle)?;
    Ok(FleetArtifact::decode(&b.artifact)?)
}

fn diff_replicas(a: &FleetArtifact, b: &FleetArtifact, say: &mut impl FnMut(String)) {
    for r in &a.replicas {
        let Some(n) = b.replica(r.id) else {
            say(format!("replica {} ({}) removed", r.id, r.datacenter));
            continue;
        };
        if n.datacenter != r.datacenter {
            say(format!(
                "replica {} moved {} -> {}",
                r.id, r.datacenter, n.datacenter
            ));
        }
        for (what, x, y) in [
            ("response key", r.response_key, n.response_key),
            ("transport key", r.transport_key, n.transport_key),
            ("OPAQUE key", r.opaque_key, n.opaque_key),
        ] {
            if x != y {
                say(format!(
                    "replica {} {what} {}… -> {}…",
                    r.id,
                    &hex(&x)[..12],
                    &hex(&y)[..12]
                ));
            }
        }
    }
    for r in b.replicas.iter().filter(|r| a.replica(r.id).is_none()) {
        say(format!("replica {} ({}) added", r.id, r.datacenter));
    }
}

fn audit_diff(args: &AuditDiff) -> Res<()> {
    let (a, b) = (artifact_of(&args.a)?, artifact_of(&args.b)?);
    println!(
        "fleet {} epoch {} -> fleet {} epoch {}",
        a.fleet_id, a.epoch, b.fleet_id, b.epoch
    );
    let mut changes = 0;
    let mut say = |s: String| {
        changes += 1;
        println!("  {s}");
    };
    if a.fleet_id != b.fleet_id {
        say(format!("fleet id {:?} -> {:?}", a.fleet_id, b.fleet_id));
    }
    diff_replicas(&a, &b, &mut say);
    if a.voters != b.voters {
        say(format!("voters {:?} -> {:?}", a.voters, b.voters));
    }
    if a.learners != b.learners {
        say(format!("learners {:?} -> {:?}", a.learners, b.learners));
    }
    if (a.not_before, a.not_after) != (b.not_before, b.not_after) {
        say(format!(
            "validity [{}, {}) -> [{}, {})",
            a.not_before, a.not_after, b.not_before, b.not_after
        ));
    }
    if changes == 0 {
        println!("  no change");
    }
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (warnings and errors when unset).
pub(crate) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Prints `e` and each of its causes, one a line, skipping a cause whose text the
/// line before already shows.
pub(crate) fn print_error(e: &dyn std::error::Error) {
    let mut shown = e.to_string();
    eprintln!("error: {shown}");
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !shown.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        shown = text;
        cause = c.source();
    }
}

fn run(command: &Command) -> Res<bool> {
    match command {
        Command::Fleet(FleetCommand::Create(a)) => fleet_create(a).map(|()| true),
        Command::Witness(WitnessCommand::Sign(a)) => witness_sign(a).map(|()| true),
        Command::Witness(WitnessCommand::Serve(a)) => tlog_cmd::witness_serve(a).map(|()| true),
        Command::Witness(WitnessCommand::Vkey(a)) => tlog_cmd::witness_vkey(a).map(|()| true),
        Command::Witness(WitnessCommand::Submit(a)) => tlog_cmd::witness_submit(a).map(|()| true),
        Command::Cosigner(CosignerCommand::Init(a)) => tlog_cmd::cosigner_init(a).map(|()| true),
        Command::Cosigner(CosignerCommand::Serve(a)) => tlog_cmd::cosigner_serve(a).map(|()| true),
        Command::Audit(AuditCommand::Bundle(a)) => tlog_cmd::audit_bundle(a),
        Command::Operator(OperatorCommand::Countersign(a)) => {
            operator_countersign(a).map(|()| true)
        }
        Command::Evidence(EvidenceCommand::Assemble(a)) => evidence_assemble(a).map(|()| true),
        Command::Audit(AuditCommand::Pins(a)) => audit_pins(a).map(|()| true),
        Command::Audit(AuditCommand::Verify(a)) => audit_verify(a),
        Command::Audit(AuditCommand::Log(a)) => audit_log(a),
        Command::Audit(AuditCommand::Diff(a)) => audit_diff(a).map(|()| true),
        // Dispatched in `main` before the shared log set-up.
        Command::Node(_) | Command::Admin(_) | Command::Testbed(_) | Command::Vault(_) => {
            unreachable!("handled in main")
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon and the admin calls set up their own logs (text or JSON).
    match &cli.command {
        Command::Node(command) => return node_cmd::main(command),
        Command::Admin(command) => return admin_cmd::main(command),
        Command::Testbed(command) => return testbed_cmd::main(command),
        Command::Vault(command) => return vault_cmd::main(command),
        _ => {}
    }
    init_tracing();
    match run(&cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            print_error(&e);
            ExitCode::from(2)
        }
    }
}
