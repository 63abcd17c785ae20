//! The witness's log in public, from the command line:
//!
//! ```text
//! vaultfleet witness serve --dir WITNESS --listen ADDR --operator-key HEX [--cosigner URL,VKEY]...
//! vaultfleet witness vkey --dir WITNESS
//! vaultfleet witness submit --url URL --dir FLEET --namespace NS --artifact FLEET/epoch-N/artifact.bin
//! vaultfleet cosigner init --dir COSIGNER --name NAME
//! vaultfleet cosigner serve --dir COSIGNER --name NAME --listen ADDR --log ORIGIN=VKEY...
//! vaultfleet audit log --url URL --pins pins.txt [--keep DIR]
//! vaultfleet audit bundle evidence-N.bin --url URL --pins pins.txt
//! ```
//!
//! The servers run until SIGTERM or SIGINT; their logs go to stderr
//! (`RUST_LOG`, info by default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet_audit::cosigner::{Cosigner, FollowedLog};
use vaultfleet_audit::fleet::evidence::Evidence;
use vaultfleet_audit::submission::Submission;
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{Bundle, Checkpoint, FleetArtifact, NoteVerifier, SignedNote};
use vaultfleet_node::run::{signals, NodeSignal};
use vaultfleet_tlog::walk::ENTRIES_MAX;
use vaultfleet_tlog::walk::{block_on, bundle_in_log, fetch_verified_log, FetchedLog};
use vaultfleet_tlog::{BaseUrl, CosignerEndpoint, CosignerServer, LogConfig, LogServer};

use crate::error::CliError;
use crate::{
    check_checkpoints, check_entries, hex, hsm, now, open_witness, pinned_checkpoint, read,
    read_pins, report, unhex32, verifier_from_pins, write, Res,
};

/// `witness serve`.
#[derive(Debug, Args)]
pub struct WitnessServe {
    /// The witness's folder (its HSM file and state, as `witness sign` uses).
    #[arg(long)]
    dir: PathBuf,
    /// Where to serve the log (HTTP).
    #[arg(long, default_value = "127.0.0.1:8740")]
    listen: SocketAddr,
    /// The operator's Ed25519 public key (64 hex): the only key whose
    /// submissions are witnessed (the `operator` line of the pins).
    #[arg(long, value_name = "HEX")]
    operator_key: String,
    /// A cosigner to ask for each checkpoint: `URL,VKEY` (its submission
    /// prefix and its cosignature/v1 verifier key); repeatable.
    #[arg(long = "cosigner", value_name = "URL,VKEY")]
    cosigners: Vec<String>,
    /// Seconds between offers of a checkpoint to cosigners that have not
    /// cosigned it.
    #[arg(long, default_value_t = 30)]
    cosign_retry: u64,
}

/// `witness vkey`.
#[derive(Debug, Args)]
pub struct WitnessVkey {
    /// The witness's folder.
    #[arg(long)]
    dir: PathBuf,
}

/// `witness submit`.
#[derive(Debug, Args)]
pub struct WitnessSubmit {
    /// The served witness (`http://HOST:PORT`).
    #[arg(long)]
    url: String,
    /// The fleet's folder (its operator key signs the submission and the
    /// countersignature is written to `epoch-N/`).
    #[arg(long)]
    dir: PathBuf,
    /// The log's namespace.
    #[arg(long)]
    namespace: String,
    /// The epoch's `artifact.bin`.
    #[arg(long)]
    artifact: PathBuf,
    /// The witness's pinned note key (as `witness vkey` prints it, published
    /// by the witness out of band), repeatable: the receipt must be signed by
    /// one, or it is not countersigned.
    #[arg(long = "witness-vkey", value_name = "VKEY", required = true)]
    witness_vkeys: Vec<String>,
}

/// `cosigner init`.
#[derive(Debug, Args)]
pub struct CosignerInit {
    /// The cosigner's folder (its HSM file and state).
    #[arg(long)]
    dir: PathBuf,
    /// Its name in cosignatures (C2SP suggests a URL without a scheme, e.g.
    /// `witness.example.com/w1`).
    #[arg(long)]
    name: String,
}

/// `cosigner serve`.
#[derive(Debug, Args)]
pub struct CosignerServe {
    /// The cosigner's folder.
    #[arg(long)]
    dir: PathBuf,
    /// Its name in cosignatures.
    #[arg(long)]
    name: String,
    /// Where to serve (HTTP).
    #[arg(long, default_value = "127.0.0.1:8741")]
    listen: SocketAddr,
    /// A log to follow: `ORIGIN=VKEY` (its checkpoint origin and its Ed25519
    /// note key, as `witness vkey` prints it); repeat for more logs or keys.
    #[arg(long = "log", value_name = "ORIGIN=VKEY", required = true)]
    logs: Vec<String>,
}

/// `audit bundle`.
#[derive(Debug, Args)]
pub struct AuditBundle {
    /// The evidence (or bare bundle) a client received.
    bundle: PathBuf,
    /// The served log.
    #[arg(long)]
    url: String,
    /// The pinned keys.
    #[arg(long)]
    pins: PathBuf,
    /// The replica whose reply carried the bundle (default: the artifact's first).
    #[arg(long)]
    replica: Option<u64>,
    /// The time to verify at, Unix seconds (default now).
    #[arg(long, value_name = "T")]
    now: Option<u64>,
    /// The most entries the served log may hold.
    #[arg(long, default_value_t = ENTRIES_MAX)]
    max_entries: u64,
}

fn base_url(url: &str) -> Res<BaseUrl> {
    BaseUrl::parse(url).map_err(CliError::Http)
}

fn vkey(text: &str) -> Res<NoteVerifier> {
    NoteVerifier::parse_vkey(text).map_err(|source| CliError::Vkey {
        vkey: text.to_string(),
        source,
    })
}

/// Watches SIGTERM and SIGINT (installed before a server starts, so a stop
/// sent as soon as it announces itself is never lost).
fn watch_stop() -> Res<std::sync::mpsc::Receiver<NodeSignal>> {
    signals(false).map_err(CliError::Signals)
}

/// Blocks until SIGTERM or SIGINT (SIGHUP is ignored).
fn wait_for_stop(events: &std::sync::mpsc::Receiver<NodeSignal>) {
    while let Ok(event) = events.recv() {
        if event != NodeSignal::Reload {
            break;
        }
    }
}

/// Prints a line a server announces; a closed stdout (a supervisor that
/// stopped reading) does not stop the server.
fn announce(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

pub(crate) fn witness_serve(a: &WitnessServe) -> Res<()> {
    let operator_key = unhex32(&a.operator_key).ok_or(CliError::OperatorKey)?;
    let mut cosigners = Vec::with_capacity(a.cosigners.len());
    for spec in &a.cosigners {
        let (url, key) = spec
            .rsplit_once(',')
            .ok_or_else(|| CliError::CosignerSpec(spec.clone()))?;
        cosigners.push(CosignerEndpoint {
            url: base_url(url)?,
            key: vkey(key)?,
        });
    }
    let witness = open_witness(&a.dir, &[])?;
    let vkeys = witness_vkeys(&witness)?;
    let mut config = LogConfig::new(a.listen, operator_key);
    config.cosigners = cosigners;
    config.checkpoints_dir = Some(a.dir.join("checkpoints"));
    config.cosign_retry = std::time::Duration::from_secs(a.cosign_retry.max(1));
    let events = watch_stop()?;
    let server = LogServer::start(witness, config)?;
    announce(&format!("witness log on http://{}", server.local_addr()));
    for v in vkeys {
        announce(&format!("log key: {v}"));
    }
    wait_for_stop(&events);
    server.shutdown();
    Ok(())
}

fn witness_vkeys<H: Hsm>(w: &vaultfleet_audit::Witness<H>) -> Res<Vec<String>> {
    w.keys()
        .iter()
        .map(|k| {
            let pk = w.public_key(&k.name)?;
            Ok(NoteVerifier::ed25519(&k.name, pk)?.vkey())
        })
        .collect()
}

pub(crate) fn witness_vkey(a: &WitnessVkey) -> Res<()> {
    let w = open_witness(&a.dir, &[])?;
    for v in witness_vkeys(&w)? {
        println!("{v}");
    }
    Ok(())
}

pub(crate) fn witness_submit(a: &WitnessSubmit) -> Res<()> {
    let url = base_url(&a.url)?;
    let artifact = FleetArtifact::decode(&read(&a.artifact)?)?;
    let operator = hsm(&a.dir.join("operator.hsm"))?;
    let signed = Submission {
        namespace: a.namespace.clone(),
        epoch: artifact.epoch,
        digest: artifact.digest()?,
        sent_at: now(),
    }
    .sign(&operator, "operator/countersign")
    .map_err(CliError::hsm("sign the submission"))?;
    let keys = a
        .witness_vkeys
        .iter()
        .map(|k| vkey(k))
        .collect::<Res<Vec<_>>>()?;
    let receipt = block_on(vaultfleet_tlog::submit::submit(&url, &signed, &keys))
        .map_err(CliError::Runtime)??;
    let w = &receipt.witnessed;
    let cs = countersign(&operator, "operator/countersign", w)?;
    let edir = a.dir.join(format!("epoch-{}", artifact.epoch));
    write(&edir.join("countersignature.bin"), &cs)?;
    write(&edir.join("witnessed.txt"), receipt.encode().as_bytes())?;
    println!(
        "witnessed {} epoch {} as leaf {} with key {}; countersigned into {}",
        a.namespace,
        artifact.epoch,
        w.leaf_index,
        w.key,
        edir.display()
    );
    Ok(())
}

pub(crate) fn cosigner_init(a: &CosignerInit) -> Res<()> {
    let h = hsm(&a.dir.join("cosigner.hsm"))?;
    let key = h
        .key("cosigner", KeyKind::Signing)
        .map_err(CliError::hsm("create the cosigner key"))?;
    let pk = h
        .public_key(key)
        .map_err(CliError::hsm("read the cosigner key"))?;
    let v = NoteVerifier::cosignature(&a.name, pk)?.vkey();
    write(&a.dir.join("cosigner.vkey"), format!("{v}\n").as_bytes())?;
    println!("{v}");
    Ok(())
}

pub(crate) fn cosigner_serve(a: &CosignerServe) -> Res<()> {
    let mut logs: Vec<FollowedLog> = Vec::new();
    for spec in &a.logs {
        let (origin, key) = spec
            .split_once('=')
            .ok_or_else(|| CliError::LogSpec(spec.clone()))?;
        let key = vkey(key)?;
        match logs.iter_mut().find(|l| l.origin == origin) {
            Some(l) => l.keys.push(key),
            None => logs.push(FollowedLog {
                origin: origin.to_string(),
                keys: vec![key],
            }),
        }
    }
    let h = hsm(&a.dir.join("cosigner.hsm"))?;
    let cosigner = Cosigner::open(h, "cosigner", &a.name, logs, a.dir.join("cosigner.state"))?;
    let v = cosigner.vkey();
    let events = watch_stop()?;
    let server = CosignerServer::start(cosigner, a.listen)?;
    announce(&format!("cosigner on http://{}", server.local_addr()));
    announce(&format!("cosigner key: {v}"));
    wait_for_stop(&events);
    server.shutdown();
    Ok(())
}

/// The pinned witness keys as note verifiers.
fn note_keys(pins: &crate::Pins) -> Vec<NoteVerifier> {
    pins.witness
        .iter()
        .filter_map(|k| NoteVerifier::ed25519(&k.name, k.public_key).ok())
        .collect()
}

/// Fetches the served log of `ns` (its checkpoint signed by a pinned witness
/// key first, at most `max_entries`), reporting a failure as a refused check.
fn fetch(
    url: &BaseUrl,
    ns: &str,
    pins: &crate::Pins,
    max_entries: u64,
) -> Res<Result<FetchedLog, String>> {
    let fetched = block_on(fetch_verified_log(url, ns, &note_keys(pins), max_entries))
        .map_err(CliError::Runtime)?;
    Ok(fetched.map_err(|e| {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    }))
}

/// The checkpoint's cosignatures against the pins: one line per pinned
/// cosigner, and whether at least the pinned number verified.
fn report_cosignatures(note: &SignedNote, pins: &crate::Pins) -> bool {
    if pins.cosigners.is_empty() {
        return true;
    }
    let mut have = 0;
    for c in &pins.cosigners {
        let ok = NoteVerifier::cosignature(&c.name, c.public_key)
            .is_ok_and(|v| matches!(v.verify(note), Ok(Some(t)) if t > 0));
        have += usize::from(ok);
        report(
            ok,
            &format!("cosigner {}", c.name),
            if ok {
                "cosigned the served checkpoint"
            } else {
                "no valid cosignature on the served checkpoint"
            },
        );
    }
    report(
        have >= pins.cosigners_required,
        "cosignatures",
        &format!(
            "{have} of {} pinned cosigners, {} required",
            pins.cosigners.len(),
            pins.cosigners_required
        ),
    )
}

/// `audit log --url`: the served log, walked like the witness's own file,
/// checked against the checkpoints kept from earlier runs (and evidence), and
/// the served checkpoint kept for the next run.
pub(crate) fn audit_log_url(
    url: &str,
    ns: &str,
    pins: &crate::Pins,
    keep: &Path,
    evidence: &[PathBuf],
    max_entries: u64,
) -> Res<bool> {
    let url = base_url(url)?;
    let log = match fetch(&url, ns, pins, max_entries)? {
        Ok(log) => log,
        Err(e) => return Ok(report(false, "fetch the served log", &e)),
    };
    let mut all = report(
        true,
        "fetch the served log",
        &format!(
            "{} entries in {} entry bundles hash to the served checkpoint's root",
            log.entries.len(),
            log.checkpoint.size.div_ceil(256)
        ),
    );
    let (tree, entries_ok) = check_entries(&log.entries, ns, pins)?;
    all &= entries_ok;
    let served = log.note.encode();
    // The walk checked the signature before fetching anything.
    report(true, "served checkpoint", "signed by a pinned witness key");
    all &= report_cosignatures(&log.note, pins);
    // The checkpoints of earlier runs, and this one kept for the next: only
    // when everything above held (R1-4: an unverified one would make every
    // later run fail until someone deletes it by hand).
    let root: String = hex(&log.checkpoint.root)[..16].to_string();
    let name = format!(
        "{}-{:012}-{root}.txt",
        ns.replace('/', "_"),
        log.checkpoint.size
    );
    let kept = keep.join(&name);
    if all && !kept.exists() {
        write(&kept, served.as_bytes())?;
    }
    std::fs::create_dir_all(keep).map_err(CliError::io(keep))?;
    let mut seen: Vec<(Checkpoint, String)> = Vec::new();
    let prefix = format!("{}-", ns.replace('/', "_"));
    let mut notes: Vec<(String, String)> = std::fs::read_dir(keep)
        .map_err(CliError::io(keep))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".txt"))
        })
        .filter_map(|p| Some((p.display().to_string(), std::fs::read_to_string(&p).ok()?)))
        .collect();
    for path in evidence {
        let e = crate::read_evidence(path)?;
        let b = Bundle::decode(&e.bundle)?;
        notes.push((format!("bundle in {}", path.display()), b.checkpoint));
    }
    for (source, text) in notes {
        match pinned_checkpoint(&text, pins) {
            Ok(cp) if cp.origin == ns => seen.push((cp, source)),
            Ok(_) => {}
            Err(e) => all &= report(false, &format!("checkpoint {source}"), &e),
        }
    }
    all &= check_checkpoints(seen, &tree);
    println!("{}", if all { "log verified" } else { "log REFUSED" });
    Ok(all)
}

/// `audit bundle`: the bundle verifies under the pins (cosignatures
/// included), and it is in the served log (no split view).
pub(crate) fn audit_bundle(a: &AuditBundle) -> Res<bool> {
    let pins = read_pins(&a.pins)?;
    let now = a.now.unwrap_or_else(now);
    let bytes = read(&a.bundle)?;
    let bundle_bytes = match Evidence::decode(&bytes) {
        Ok(e) => e.bundle,
        Err(_) => bytes,
    };
    let bundle = match Bundle::decode(&bundle_bytes) {
        Ok(b) => b,
        Err(e) => return Ok(report(false, "decode the bundle", &e.to_string())),
    };
    let replica = match a.replica {
        Some(r) => r,
        None => {
            FleetArtifact::decode(&bundle.artifact)?
                .replicas
                .first()
                .ok_or(CliError::NoReplica)?
                .id
        }
    };
    let mut verifier = verifier_from_pins(&pins)?;
    let mut all = match verifier.verify(&bundle_bytes, now, replica) {
        Ok(artifact) => report(
            true,
            "validation bundle",
            &format!(
                "epoch {} holds under the pins{}",
                artifact.epoch,
                if pins.cosigners_required > 0 {
                    format!(
                        ", with at least {} pinned cosignatures",
                        pins.cosigners_required
                    )
                } else {
                    String::new()
                }
            ),
        ),
        Err(e) => report(false, "validation bundle", &e.to_string()),
    };
    let url = base_url(&a.url)?;
    let log = match fetch(&url, &bundle.namespace, &pins, a.max_entries)? {
        Ok(log) => log,
        Err(e) => return Ok(report(false, "fetch the served log", &e)),
    };
    report(true, "served checkpoint", "signed by a pinned witness key");
    all &= match bundle_in_log(&bundle, &log) {
        Ok(()) => report(
            true,
            "in the served log",
            &format!(
                "the bundle's checkpoint is the log's at its size, and its statement is leaf {} (served size {})",
                bundle.leaf_index, log.checkpoint.size
            ),
        ),
        Err(e) => report(false, "in the served log", &e.to_string()),
    };
    println!(
        "{}",
        if all {
            "bundle verified: it is in the served log"
        } else {
            "bundle REFUSED"
        }
    );
    Ok(all)
}

/// `evidence assemble --witness-url`: the bundle from the served log (its
/// cosigned checkpoint, checked to be signed by one of `witness_vkeys`, and an
/// inclusion proof in it) for the epoch whose digest is `digest`.
pub(crate) fn assemble_from_url(
    url: &str,
    witness_vkeys: &[String],
    ns: &str,
    epoch: u64,
    digest: [u8; 32],
) -> Res<(vaultfleet_audit::Witnessed, Vec<[u8; 32]>, SignedNote, u64)> {
    let url = base_url(url)?;
    let keys = witness_vkeys
        .iter()
        .map(|k| vkey(k))
        .collect::<Res<Vec<_>>>()?;
    let log = block_on(fetch_verified_log(&url, ns, &keys, ENTRIES_MAX))
        .map_err(CliError::Runtime)?
        .map_err(CliError::Walk)?;
    let entry = log
        .entries
        .iter()
        .find(|e| e.statement.epoch == epoch)
        .cloned()
        .ok_or_else(|| CliError::NotWitnessed {
            epoch,
            namespace: ns.to_string(),
        })?;
    // R1-H1: the served log's entry for the epoch must be this artifact's.
    if entry.statement.digest != digest {
        return Err(CliError::DigestMismatch { epoch });
    }
    let proof = log
        .tree
        .inclusion_proof(entry.leaf_index, log.tree.size())?;
    Ok((entry, proof, log.note, log.tree.size()))
}
