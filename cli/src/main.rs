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
//! Keys live in soft HSMs kept in files (`*.hsm`) under the directories given:
//! the fleet's security world, one HSM per replica (its device attestation key
//! and transport key), a stand-in vendor root, the ceremony officers, the
//! operator's countersigning key, and the witness. A production deployment
//! points the same flow at real HSMs through the `Hsm` trait; docs/audit.md says
//! what each stand-in replaces.
// A command-line tool reads the wall clock for timestamps.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vaultfleet::hsm::{verify_signature, Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::evidence::{
    attest, audit_deployment, certify_device, AuditPins, Ceremony, Evidence,
};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::merkle::verify_consistency;
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{Bundle, FleetVerifier, Witness, WitnessKey, WitnessKeySpec};
use vaultfleet_vault::VaultKeys;

const USAGE: &str = "usage: vaultfleet <fleet create|witness sign|operator countersign|evidence assemble|audit pins|audit verify|audit log|audit diff> [options]
(see the crate documentation or docs/audit.md for each command's options)";

type Res<T> = Result<T, String>;

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn need<'a>(args: &'a [String], name: &str) -> Res<&'a str> {
    opt(args, name).ok_or_else(|| format!("missing {name}\n{USAGE}"))
}

fn num(args: &[String], name: &str, default: Option<u64>) -> Res<u64> {
    match opt(args, name) {
        Some(v) => v
            .parse()
            .map_err(|_| format!("{name}: {v:?} is not a number")),
        None => default.ok_or_else(|| format!("missing {name}")),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Res<[u8; 32]> {
    let bytes: Option<Vec<u8>> = (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    bytes
        .filter(|_| s.len() == 64)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{s:?} is not 32 bytes of hex"))
}

fn hsm(path: &Path) -> Res<SoftHsm> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    SoftHsm::open(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Res<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn write(path: &Path, bytes: &[u8]) -> Res<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn public(h: &SoftHsm, label: &str) -> Res<[u8; 32]> {
    let k = h.key(label, KeyKind::Signing).map_err(|e| e.to_string())?;
    h.public_key(k).map_err(|e| e.to_string())
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

fn witness_keys(args: &[String]) -> Vec<WitnessKeySpec> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--key" {
            if let Some(spec) = args.get(i + 1) {
                let (name, nb) = spec.split_once('@').unwrap_or((spec, "0"));
                match nb.parse() {
                    Ok(not_before) => keys.push(WitnessKeySpec {
                        name: name.to_string(),
                        not_before,
                    }),
                    Err(_) => eprintln!(
                        "warning: --key {spec:?}: not_before is not a number; key ignored"
                    ),
                }
            }
            i += 1;
        }
        i += 1;
    }
    if keys.is_empty() {
        keys.push(WitnessKeySpec {
            name: "witness-1".into(),
            not_before: 0,
        });
    }
    keys
}

fn open_witness(dir: &Path, args: &[String]) -> Res<Witness<SoftHsm>> {
    let keys_file = dir.join("keys.txt");
    let keys = if args.iter().any(|a| a == "--key") {
        let keys = witness_keys(args);
        let text: String = keys
            .iter()
            .map(|k| format!("{} {}\n", k.name, k.not_before))
            .collect();
        write(&keys_file, text.as_bytes())?;
        keys
    } else if let Ok(text) = std::fs::read_to_string(&keys_file) {
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, t)| WitnessKeySpec {
                name: n.into(),
                not_before: t.parse().unwrap_or(0),
            })
            .collect()
    } else {
        let keys = witness_keys(&[]);
        write(&keys_file, b"witness-1 0\n")?;
        keys
    };
    Witness::open(
        hsm(&dir.join("witness.hsm"))?,
        keys,
        dir.join("witness.state"),
    )
    .map_err(|e| e.to_string())
}

fn fleet_create(args: &[String]) -> Res<()> {
    let dir = PathBuf::from(need(args, "--dir")?);
    let fleet_id = need(args, "--fleet-id")?;
    let epoch = num(args, "--epoch", None)?;
    let not_before = num(args, "--not-before", Some(now()))?;
    let days = num(args, "--days", Some(365))?;
    let world = hsm(&dir.join("world.hsm"))?;
    let sealed_path = dir.join("opaque-setup.sealed");
    let sealed = match std::fs::read(&sealed_path) {
        Ok(s) => s,
        Err(_) => {
            let s = VaultKeys::provision(&world).map_err(|e| e.to_string())?;
            write(&sealed_path, &s)?;
            s
        }
    };
    let mut replicas = Vec::new();
    for spec in need(args, "--replicas")?.split(',') {
        let (id, dc) = spec
            .split_once(':')
            .ok_or("--replicas is id:datacenter,...")?;
        let id: u64 = id.parse().map_err(|_| format!("replica id {id:?}"))?;
        let keys = VaultKeys::open(world.clone(), &sealed, 1, id).map_err(|e| e.to_string())?;
        // The replica's transport key: an X25519 secret drawn from its HSM, kept
        // sealed by it for the (planned) Noise transport.
        let rh = hsm(&dir.join(format!("replica-{id}.hsm")))?;
        let seal_key = rh
            .key("transport/seal", KeyKind::Aead)
            .map_err(|e| e.to_string())?;
        let tpath = dir.join(format!("replica-{id}.transport"));
        let secret = match std::fs::read(&tpath) {
            Ok(sealed) => rh
                .unseal(seal_key, b"x25519", &sealed)
                .map_err(|e| e.to_string())?
                .to_vec(),
            Err(_) => {
                let mut s = [0u8; 32];
                rh.random(&mut s).map_err(|e| e.to_string())?;
                write(
                    &tpath,
                    &rh.seal(seal_key, b"x25519", &s)
                        .map_err(|e| e.to_string())?,
                )?;
                s.to_vec()
            }
        };
        let mut sk = [0u8; 32];
        sk.copy_from_slice(&secret[..32]);
        let transport = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(sk));
        replicas.push(ReplicaKeys {
            id,
            datacenter: dc.to_string(),
            response_key: keys.response_public_key().map_err(|e| e.to_string())?,
            transport_key: transport.to_bytes(),
            opaque_key: keys.opaque_public_key(),
        });
    }
    replicas.sort_by_key(|r| r.id);
    let voters = replicas.iter().map(|r| r.id).collect();
    let artifact = FleetArtifact {
        fleet_id: fleet_id.to_string(),
        epoch,
        replicas,
        voters,
        learners: vec![],
        not_before,
        not_after: not_before + days * 86_400,
    };
    let bytes = artifact.encode().map_err(|e| e.to_string())?;
    let edir = dir.join(format!("epoch-{epoch}"));
    write(&edir.join("artifact.bin"), &bytes)?;
    let digest = artifact.digest().map_err(|e| e.to_string())?;
    // Each HSM attests its replica's keys with a device key its vendor certified.
    let vendor = hsm(&dir.join("vendor.hsm"))?;
    let root = vendor
        .key("vendor/root", KeyKind::Signing)
        .map_err(|e| e.to_string())?;
    let fw = firmware();
    let mut attestations = Vec::new();
    for r in &artifact.replicas {
        let rh = hsm(&dir.join(format!("replica-{}.hsm", r.id)))?;
        let device = rh
            .key("device/attestation", KeyKind::Signing)
            .map_err(|e| e.to_string())?;
        let device_key = rh.public_key(device).map_err(|e| e.to_string())?;
        let cert = certify_device(
            &vendor,
            root,
            VENDOR,
            &format!("softhsm2 replica-{}", r.id),
            device_key,
        )
        .map_err(|e| e.to_string())?;
        attestations
            .push(attest(&rh, device, cert, &artifact, r.id, fw).map_err(|e| e.to_string())?);
    }
    // The key ceremony: the officers sign the digest and the firmware hashes.
    let mut ceremony = Ceremony {
        artifact_digest: digest,
        firmware: artifact.replicas.iter().map(|r| (r.id, fw)).collect(),
        threshold: THRESHOLD,
        signatures: Vec::new(),
    };
    let msg = ceremony.signed_bytes();
    for i in 1..=OFFICERS {
        let oh = hsm(&dir.join(format!("officer-{i}.hsm")))?;
        let k = oh
            .key("officer", KeyKind::Signing)
            .map_err(|e| e.to_string())?;
        ceremony.signatures.push((
            format!("officer-{i}"),
            oh.sign(k, &msg).map_err(|e| e.to_string())?,
        ));
    }
    let partial = Evidence {
        bundle: Vec::new(),
        attestations,
        ceremony,
    };
    write(&edir.join("deployment.bin"), &partial.encode())?;
    println!(
        "fleet {fleet_id} epoch {epoch}: {} replicas, digest {}",
        artifact.replicas.len(),
        hex(&digest)
    );
    println!("wrote {}", edir.display());
    Ok(())
}

fn witness_sign(args: &[String]) -> Res<()> {
    let dir = PathBuf::from(need(args, "--dir")?);
    let ns = need(args, "--namespace")?;
    let artifact = FleetArtifact::decode(&read(Path::new(need(args, "--artifact")?))?)
        .map_err(|e| e.to_string())?;
    let time = num(args, "--time", Some(now()))?;
    let mut w = open_witness(&dir, args)?;
    let signed = w
        .sign(
            ns,
            artifact.epoch,
            artifact.digest().map_err(|e| e.to_string())?,
            time,
        )
        .map_err(|e| format!("the witness refused: {e}"))?;
    let cp = w.checkpoint(ns, time).map_err(|e| e.to_string())?;
    let size = w.tree(ns).map_or(0, |t| t.size());
    // Never overwrite a published checkpoint: a second root for a size is
    // evidence of a fork and must stay visible.
    let root = vaultfleet_audit::Checkpoint::parse(&cp.text)
        .map_err(|e| e.to_string())?
        .root;
    let name = format!("{ns}-{size:012}-{}.txt", &hex(&root)[..16]);
    write(&dir.join("checkpoints").join(name), cp.encode().as_bytes())?;
    println!(
        "witnessed {ns} epoch {} as leaf {} with key {}; checkpoint size {size}",
        signed.statement.epoch, signed.leaf_index, signed.key
    );
    Ok(())
}

fn operator_countersign(args: &[String]) -> Res<()> {
    let dir = PathBuf::from(need(args, "--dir")?);
    let epoch = num(args, "--epoch", None)?;
    let ns = need(args, "--namespace")?;
    let w = open_witness(Path::new(need(args, "--witness-dir")?), &[])?;
    let artifact = FleetArtifact::decode(&read(&dir.join(format!("epoch-{epoch}/artifact.bin")))?)
        .map_err(|e| e.to_string())?;
    let digest = artifact.digest().map_err(|e| e.to_string())?;
    let entry = w
        .entries(ns)
        .iter()
        .find(|e| e.statement.epoch == epoch)
        .ok_or_else(|| format!("the witness has not signed epoch {epoch} of {ns}"))?;
    if entry.statement.digest != digest {
        return Err(
            "the witness signed another digest for this epoch: refusing to countersign".into(),
        );
    }
    let op = hsm(&dir.join("operator.hsm"))?;
    let cs = countersign(&op, "operator/countersign", entry).map_err(|e| e.to_string())?;
    write(
        &dir.join(format!("epoch-{epoch}/countersignature.bin")),
        &cs,
    )?;
    println!(
        "countersigned witness signature by {} on epoch {epoch}",
        entry.key
    );
    Ok(())
}

fn evidence_assemble(args: &[String]) -> Res<()> {
    let dir = PathBuf::from(need(args, "--dir")?);
    let epoch = num(args, "--epoch", None)?;
    let ns = need(args, "--namespace")?;
    let time = num(args, "--time", Some(now()))?;
    let wdir = PathBuf::from(need(args, "--witness-dir")?);
    let w = open_witness(&wdir, &[])?;
    let edir = dir.join(format!("epoch-{epoch}"));
    let artifact = read(&edir.join("artifact.bin"))?;
    let cs: [u8; 64] = read(&edir.join("countersignature.bin"))?
        .try_into()
        .map_err(|_| "countersignature.bin is not 64 bytes")?;
    let entry = w
        .entries(ns)
        .iter()
        .find(|e| e.statement.epoch == epoch)
        .ok_or_else(|| format!("the witness has not signed epoch {epoch} of {ns}"))?;
    let tree = w.tree(ns).ok_or("empty log")?;
    let proof = tree
        .inclusion_proof(entry.leaf_index, tree.size())
        .map_err(|e| e.to_string())?;
    let cp = w.checkpoint(ns, time).map_err(|e| e.to_string())?;
    let bundle = Bundle::assemble(artifact, entry, cs, proof, &cp);
    let mut evidence =
        Evidence::decode(&read(&edir.join("deployment.bin"))?).map_err(|e| e.to_string())?;
    evidence.bundle = bundle.encode();
    let out = PathBuf::from(need(args, "--out")?);
    write(&out, &evidence.encode())?;
    println!(
        "wrote {} (epoch {epoch}, checkpoint size {})",
        out.display(),
        tree.size()
    );
    Ok(())
}

fn audit_pins(args: &[String]) -> Res<()> {
    let dir = PathBuf::from(need(args, "--dir")?);
    let ns = need(args, "--namespace")?;
    let w = open_witness(Path::new(need(args, "--witness-dir")?), &[])?;
    let mut text = format!("namespace {ns}\n");
    for k in w.keys() {
        let pk = w.public_key(&k.name).map_err(|e| e.to_string())?;
        text.push_str(&format!(
            "witness {} {} {}\n",
            k.name,
            k.not_before,
            hex(&pk)
        ));
    }
    text.push_str(&format!(
        "operator {}\n",
        hex(&public(
            &hsm(&dir.join("operator.hsm"))?,
            "operator/countersign"
        )?)
    ));
    text.push_str(&format!(
        "vendor {VENDOR} {}\n",
        hex(&public(&hsm(&dir.join("vendor.hsm"))?, "vendor/root")?)
    ));
    for i in 1..=OFFICERS {
        text.push_str(&format!(
            "officer officer-{i} {}\n",
            hex(&public(
                &hsm(&dir.join(format!("officer-{i}.hsm")))?,
                "officer"
            )?)
        ));
    }
    text.push_str(&format!("threshold {THRESHOLD}\n"));
    let out = PathBuf::from(need(args, "--out")?);
    write(&out, text.as_bytes())?;
    println!(
        "wrote {}: the keys an auditor pins (publish them out of band)",
        out.display()
    );
    Ok(())
}

struct Pins {
    namespace: String,
    witness: Vec<WitnessKey>,
    operator: [u8; 32],
    audit: AuditPins,
}

fn read_pins(path: &Path) -> Res<Pins> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut p = Pins {
        namespace: String::new(),
        witness: Vec::new(),
        operator: [0; 32],
        audit: AuditPins::default(),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["namespace", ns] => p.namespace = ns.to_string(),
            ["witness", name, nb, key] => p.witness.push(WitnessKey {
                name: name.to_string(),
                not_before: nb.parse().map_err(|_| format!("pins: {line:?}"))?,
                public_key: unhex32(key)?,
            }),
            ["operator", key] => p.operator = unhex32(key)?,
            ["vendor", name, key] => p.audit.vendor_roots.push((name.to_string(), unhex32(key)?)),
            ["officer", name, key] => p.audit.officers.push((name.to_string(), unhex32(key)?)),
            ["threshold", n] => {
                p.audit.threshold = n.parse().map_err(|_| format!("pins: {line:?}"))?
            }
            [] => {}
            _ => return Err(format!("pins: unknown line {line:?}")),
        }
    }
    if p.namespace.is_empty() || p.witness.is_empty() || p.audit.threshold == 0 {
        return Err("pins need a namespace, at least one witness key and a threshold".into());
    }
    Ok(p)
}

fn report(ok: bool, what: &str, detail: &str) -> bool {
    println!("[{}] {what}: {detail}", if ok { "pass" } else { "FAIL" });
    ok
}

fn audit_verify(args: &[String]) -> Res<bool> {
    let path = args.first().ok_or("audit verify EVIDENCE --pins PINS")?;
    let pins = read_pins(Path::new(need(args, "--pins")?))?;
    let now = num(args, "--now", Some(now()))?;
    let evidence = match Evidence::decode(&read(Path::new(path))?) {
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
    let mut verifier = FleetVerifier::new(&pins.namespace, pins.witness.clone(), pins.operator);
    let artifact = match FleetArtifact::decode(
        &Bundle::decode(&evidence.bundle)
            .map_err(|e| e.to_string())?
            .artifact,
    ) {
        Ok(a) => a,
        Err(e) => return Ok(report(false, "fleet artifact", &e.to_string())),
    };
    let replica = num(args, "--replica", Some(artifact.replicas[0].id))?;
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
            Err(e) => report(false, &step.what, e),
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

fn audit_log(args: &[String]) -> Res<bool> {
    use vaultfleet_audit::{Checkpoint, MerkleTree, NoteVerifier, SignedNote};
    let pins = read_pins(Path::new(need(args, "--pins")?))?;
    let ns = opt(args, "--namespace")
        .unwrap_or(&pins.namespace)
        .to_string();
    let wdir = PathBuf::from(need(args, "--witness-dir")?);
    // The log as the witness publishes it; read without its HSM.
    let text = std::fs::read_to_string(wdir.join("witness.state")).map_err(|e| e.to_string())?;
    let entries = vaultfleet_audit::witness::parse_log(&text)?;
    let mut all = true;
    let mut tree = MerkleTree::new();
    let mut last_epoch = 0;
    for e in entries.iter().filter(|e| e.statement.namespace == ns) {
        let key = pins.witness.iter().find(|k| k.name == e.key);
        let signed = key.is_some_and(|k| {
            e.statement.timestamp >= k.not_before
                && verify_signature(&k.public_key, &e.statement.signed_bytes(), &e.signature)
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
        tree.append(&vaultfleet_audit::witness::leaf_bytes(
            &e.statement,
            &e.key,
            &e.signature,
        ));
    }
    // Checkpoints: the witness's published ones, plus any collected elsewhere
    // (from clients, mirrors, or the bundles in evidence files: --evidence FILE).
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
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--evidence" {
            let path = args.get(i + 1).ok_or("--evidence FILE")?;
            let e = Evidence::decode(&read(Path::new(path))?).map_err(|e| e.to_string())?;
            let b = Bundle::decode(&e.bundle).map_err(|e| e.to_string())?;
            notes.push((format!("bundle in {path}"), b.checkpoint));
            i += 1;
        }
        i += 1;
    }
    let mut seen: Vec<(Checkpoint, String)> = Vec::new();
    for (source, text) in notes {
        let parsed = SignedNote::parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|n| {
                let signed = pins.witness.iter().any(|k| {
                    NoteVerifier::ed25519(&k.name, k.public_key).is_ok_and(|v| v.verify(&n).is_ok())
                });
                if !signed {
                    return Err("not signed by a pinned witness key".to_string());
                }
                Checkpoint::parse(&n.text).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(cp) if cp.origin == ns => seen.push((cp, source)),
            Ok(_) => {}
            Err(e) => all &= report(false, &format!("checkpoint {source}"), &e),
        }
    }
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
    println!("{}", if all { "log verified" } else { "log REFUSED" });
    Ok(all)
}

fn artifact_of(path: &Path) -> Res<FleetArtifact> {
    let bytes = read(path)?;
    if let Ok(a) = FleetArtifact::decode(&bytes) {
        return Ok(a);
    }
    let e = Evidence::decode(&bytes)
        .map_err(|e| format!("{}: neither an artifact nor evidence: {e}", path.display()))?;
    let b = Bundle::decode(&e.bundle).map_err(|e| e.to_string())?;
    FleetArtifact::decode(&b.artifact).map_err(|e| e.to_string())
}

fn audit_diff(args: &[String]) -> Res<()> {
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        return Err("audit diff A B".into());
    };
    let (a, b) = (artifact_of(Path::new(a))?, artifact_of(Path::new(b))?);
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
    for r in &a.replicas {
        match b.replica(r.id) {
            None => say(format!("replica {} ({}) removed", r.id, r.datacenter)),
            Some(n) => {
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
        }
    }
    for r in b.replicas.iter().filter(|r| a.replica(r.id).is_none()) {
        say(format!("replica {} ({}) added", r.id, r.datacenter));
    }
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.as_slice() {
        [a, b, rest @ ..] => (format!("{a} {b}"), rest),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "fleet create" => fleet_create(rest).map(|()| true),
        "witness sign" => witness_sign(rest).map(|()| true),
        "operator countersign" => operator_countersign(rest).map(|()| true),
        "evidence assemble" => evidence_assemble(rest).map(|()| true),
        "audit pins" => audit_pins(rest).map(|()| true),
        "audit verify" => audit_verify(rest),
        "audit log" => audit_log(rest),
        "audit diff" => audit_diff(rest).map(|()| true),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
