//! A node following the witness's log as the witness serves it
//! (`[vault] witness_log_url`, C2SP tlog-tiles over HTTP, `vaultfleet-tlog`'s
//! `LogServer` in process on loopback, or a static stand-in serving whatever
//! signed note and entries a test needs):
//!
//! * (a) the served log holding the evidence's checkpoint: the node starts and
//!   serves; the log grows (a new epoch submitted) and a reload takes the
//!   longer log, its root at the evidence's size unchanged;
//! * (b) the witness stopped: a reload fails and the node serves on as before;
//! * (c) a forked witness (the same key, another history): refused, the
//!   served log's root at the evidence's size is not the evidence's;
//! * (d) a served checkpoint not signed by the pinned witness key: refused;
//! * the re-review of issue 16 (r2_1 to r2_4): a replayed older checkpoint
//!   and a fork against the accepted one are refused (the fork's two notes
//!   kept as evidence); a start while the witness is down uses the verified
//!   cache; only a pinned key valid now, with the required cosigners, is
//!   taken; a stop during a reload's slow fetch is prompt.
//! * the third review (r3_1 to r3_8): a reload checks the accepted
//!   checkpoint on disk too; reloads run one at a time and a second node on
//!   a live data directory writes nothing; a reload panicking during a stop
//!   does not abort it; fork evidence is bounded; a bad line by a pinned
//!   cosigner refuses the served checkpoint (r3_2's and r3_8's file-level
//!   checks are unit tests in `served_log.rs`).
//!
//! C2SP signed-note: "If the key name and ID match a known key, verifiers
//! MUST verify the signature" (the pinned witness key's, before any tile is
//! fetched), and C2SP tlog-checkpoint: "clients MUST ignore unknown
//! signatures" (another key under the pinned name is not the pinned key: (d)).
//! C2SP tlog-tiles: "Each entry in a bundle hashes to the corresponding entry
//! in the corresponding “level 0” Merkle Tree tile" (the walk refuses entries
//! that do not hash to the checkpoint's root).
// Tests of sockets and processes run in wall-clock time, every wait bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{chain, Fixture, NS, READY_WAIT};
use vaultfleet::hsm::{Hsm, KeyHandle, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::evidence::Evidence;
use vaultfleet_audit::note::{cosign, NoteSignature, NoteVerifier, SignedNote};
use vaultfleet_audit::submission::Submission;
use vaultfleet_audit::tiles::{TilePath, TiledLog};
use vaultfleet_audit::witness::{countersign, leaf_bytes};
use vaultfleet_audit::{Bundle, BundleError, Witness, WitnessKeySpec};
use vaultfleet_node::config::NodeConfig;
use vaultfleet_node::hsm::hex;
use vaultfleet_node::run::{
    serve_signals, CacheError, NodeSignal, ReloadError, RunningNode, ServedLogError, StartError,
    FORK_EVIDENCE_PREFIX, SERVED_CHECKPOINT_FILE, SERVED_LOG_FILE,
};
use vaultfleet_node::served_log::FORK_EVIDENCE_PAIRS_MAX;
use vaultfleet_tlog::walk::{block_on, fetch_verified_log, WalkError, ENTRIES_MAX};
use vaultfleet_tlog::{BaseUrl, HttpError, LogConfig, LogServer};
use vaultfleet_vault::BundleSourceError;

/// The witness whose HSM file and log live in `dir` (its one key is named
/// `witness-1`, like the fixture's).
fn witness_in(dir: &Path) -> Witness<SoftHsm> {
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

/// The fixture's own witness (`witness/` in its folder).
fn fixture_witness(f: &Fixture) -> Witness<SoftHsm> {
    witness_in(&f.root().join("witness"))
}

/// The fixture's witness key (its HSM file copied into `fork/`) with a log
/// of its own, empty: a twin that can sign another history.
fn twin_witness(f: &Fixture) -> Witness<SoftHsm> {
    let fork = f.root().join("fork");
    std::fs::create_dir_all(&fork).unwrap();
    std::fs::copy(
        f.root().join("witness").join("witness.hsm"),
        fork.join("witness.hsm"),
    )
    .unwrap();
    witness_in(&fork)
}

/// Serves `witness`'s log on loopback, taking submissions signed by the
/// fixture's operator.
fn serve(f: &Fixture, witness: Witness<SoftHsm>) -> LogServer {
    LogServer::start(
        witness,
        LogConfig::new("127.0.0.1:0".parse().unwrap(), f.operator_public),
    )
    .unwrap()
}

/// Serves the fixture's own witness's log (see [`serve`]).
fn serve_fixture_witness(f: &Fixture) -> LogServer {
    serve(f, fixture_witness(f))
}

fn url_of(server: &LogServer) -> String {
    format!("http://{}", server.local_addr())
}

/// Node 1's data directory.
fn data_dir(f: &Fixture) -> PathBuf {
    f.root().join("node-1").join("data")
}

/// Node 1 never got as far as creating its data directory.
fn assert_nothing_written(f: &Fixture) {
    assert!(!data_dir(f).exists(), "nothing written");
}

/// Node 1's config (a one-voter fleet), reading the witness's log at `url`
/// instead of the fixture's log file; written as `node.toml`.
fn config_at(f: &Fixture, url: &str) -> NodeConfig {
    config_named(f, url, "node.toml", |t| t)
}

/// [`config_at`], its text changed by `edit` first.
fn config_with(f: &Fixture, url: &str, edit: impl FnOnce(String) -> String) -> NodeConfig {
    config_named(f, url, "node.toml", edit)
}

/// [`config_with`], written as `name`.
fn config_named(
    f: &Fixture,
    url: &str,
    name: &str,
    edit: impl FnOnce(String) -> String,
) -> NodeConfig {
    let text = edit(f.config_text(1, &[1], None, None));
    let file_line = format!("witness_log = \"{}\"\n", f.witness_log().display());
    assert!(
        text.contains(&file_line),
        "the fixture's config reads the file"
    );
    let text = text.replacen(&file_line, &format!("witness_log_url = \"{url}\"\n"), 1);
    NodeConfig::load(&f.write_config(1, name, &text)).unwrap()
}

/// Config text `t` of the fixture, reading the evidence at `evidence`
/// instead of the fixture's `evidence.bin`.
fn with_evidence(f: &Fixture, t: String, evidence: &Path) -> String {
    let root = f.root().display().to_string();
    t.replacen(
        &format!("evidence = \"{root}/evidence.bin\""),
        &format!("evidence = \"{}\"", evidence.display()),
        1,
    )
}

/// Config text `t` with one more `[vault]` table (`[[vault.witness_key]]`,
/// `[[vault.cosigner]]`) of `fields`, before `[timing]`.
fn with_table(t: String, table: &str, fields: &str) -> String {
    t.replacen(
        "[timing]",
        &format!("[[vault.{table}]]\n{fields}\n\n[timing]"),
        1,
    )
}

/// Starts node 1 with `config` and waits until it serves.
fn start_serving(config: NodeConfig) -> RunningNode {
    let node = RunningNode::start(config).unwrap();
    assert!(node.wait_ready(READY_WAIT), "the node serves");
    node
}

/// Waits (at most 10 s, polling every `every`) until `done`; `what` names
/// the wait in the failure.
fn wait_until(what: &str, every: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(every);
    }
}

/// The served-log refusal inside `e`, if that is what it is.
fn served_log_error(e: &StartError) -> Option<&ServedLogError> {
    match e {
        StartError::ServedLog {
            namespace, source, ..
        } if namespace == NS => Some(&**source),
        _ => None,
    }
}

/// The refused start inside the failed reload `e`.
fn refused_start(e: &ReloadError) -> &StartError {
    match e {
        ReloadError::Start(start) => start,
        other => panic!("a refused start inside the reload expected, got {other:?}"),
    }
}

/// Asserts that the start error `$e` is a served-log refusal matching
/// `$pattern` (the error's chain in the failure).
macro_rules! assert_served_log_error {
    ($e:expr, $($pattern:tt)+) => {{
        let e: &StartError = $e;
        assert!(
            matches!(served_log_error(e), $($pattern)+),
            "{}",
            chain(e)
        );
    }};
}

#[test]
fn a_node_follows_the_served_log_and_keeps_serving_when_the_witness_goes_down() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let server = serve_fixture_witness(&f);
    let url = url_of(&server);

    // (a) The served log holds the evidence's checkpoint: the node starts.
    let node = start_serving(config_at(&f, &url));
    assert_eq!(node.accepted_epoch(), 1);

    // The operator submits epoch 2: the served log grows to two entries.
    let operator = SoftHsm::open(f.root().join("operator.hsm")).unwrap();
    let a2 = f.artifact(2, &[1], &[]);
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signed = Submission {
        namespace: NS.into(),
        epoch: 2,
        digest: a2.digest().unwrap(),
        sent_at,
    }
    .sign(&operator, "operator")
    .unwrap();
    let base = BaseUrl::parse(&url).unwrap();
    let log_key = NoteVerifier::ed25519("witness-1", f.witness_public).unwrap();
    block_on(vaultfleet_tlog::submit::submit(&base, &signed, &[log_key]))
        .unwrap()
        .unwrap();
    wait_until(
        "the served log never grew to 2",
        Duration::from_millis(20),
        || {
            block_on(fetch_verified_log(
                &base,
                NS,
                &[NoteVerifier::ed25519("witness-1", f.witness_public).unwrap()],
                ENTRIES_MAX,
            ))
            .unwrap()
            .map_or(0, |log| log.checkpoint.size)
                == 2
        },
    );
    // A reload takes the longer log: the evidence's checkpoint (size 1) is
    // its prefix.
    assert_eq!(node.reload(config_at(&f, &url)).unwrap(), 1);

    // (b) The witness goes down: a reload fails, naming the fetch, and the
    // node serves on as before.
    server.shutdown();
    let e = node
        .reload(config_at(&f, &url))
        .expect_err("a reload without the served log");
    let start = refused_start(&e);
    assert_served_log_error!(
        start,
        Some(ServedLogError::Walk(WalkError::Fetch {
            source: HttpError::Connect { .. },
            ..
        }))
    );
    assert!(chain(&e).contains(&url), "{}", chain(&e));
    assert_eq!(node.accepted_epoch(), 1);
    assert!(node.is_ready(), "the node keeps serving what it had");
    assert_eq!(node.served_log_size(), Some(2));
    node.stop().unwrap();
}

#[test]
fn a_served_log_from_a_forked_witness_is_refused() {
    let f = Fixture::new(&[(1, "dc-a")]);
    // The witness's key (its HSM file copied), on another history: epoch 1
    // there is another fleet's artifact, and the log is longer (epoch 2).
    let mut twin = twin_witness(&f);
    assert_eq!(twin.public_key("witness-1").unwrap(), f.witness_public);
    let mut evil = f.artifact(1, &[1], &[]);
    evil.fleet_id = "evil-fleet".into();
    twin.sign(NS, 1, evil.digest().unwrap(), f.now).unwrap();
    let a2 = f.artifact(2, &[1], &[]);
    twin.sign(NS, 2, a2.digest().unwrap(), f.now + 2).unwrap();
    let server = serve(&f, twin);

    let e = RunningNode::start(config_at(&f, &url_of(&server))).unwrap_err();
    // The checkpoint is signed by the pinned key and the entries hash to it:
    // only the root at the evidence's size tells the histories apart.
    assert!(
        matches!(
            &e,
            StartError::Bundle {
                source: BundleSourceError::NotTheCheckpointedLog { size: 1 },
                ..
            }
        ),
        "{}",
        chain(&e)
    );
    assert_nothing_written(&f);

    // The control: the fixture's own witness, served, is taken.
    server.shutdown();
    let server = serve_fixture_witness(&f);
    let node = RunningNode::start(config_at(&f, &url_of(&server))).unwrap();
    node.stop().unwrap();
    server.shutdown();
}

#[test]
fn a_served_checkpoint_not_signed_by_the_pinned_witness_key_is_refused() {
    let f = Fixture::new(&[(1, "dc-a")]);
    // Another witness (its own key, also named witness-1) that logged the
    // fleet's artifact.
    let other = f.root().join("other-witness");
    let mut witness = witness_in(&other);
    assert_ne!(witness.public_key("witness-1").unwrap(), f.witness_public);
    let a1 = f.artifact(1, &[1], &[]);
    witness.sign(NS, 1, a1.digest().unwrap(), f.now).unwrap();
    let server = serve(&f, witness);

    let e = RunningNode::start(config_at(&f, &url_of(&server))).unwrap_err();
    assert_served_log_error!(&e, Some(ServedLogError::Walk(WalkError::Unsigned)));
    assert!(
        chain(&e).contains("not signed by a pinned witness key"),
        "{}",
        chain(&e)
    );
    assert_nothing_written(&f);
    server.shutdown();
}

/// A raw HTTP server on loopback answering each request (one a connection)
/// with `answer(path)`, until the test process ends; its base URL.
/// (`vaultfleet-tlog`'s hostile-server tests have their own: sharing one
/// across the two crates' tests would take a crate of its own.)
fn serve_raw_http(answer: impl Fn(&str) -> (u16, Vec<u8>) + Send + 'static) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            while n < buf.len() {
                let Ok(m) = s.read(&mut buf[n..]) else { break };
                if m == 0 {
                    break;
                }
                n += m;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split(' ').nth(1).unwrap_or("");
            let (status, body) = answer(path);
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = s.write_all(&body);
        }
    });
    url
}

/// A stand-in for a witness's public log: serves `/<NS>/checkpoint` and the
/// entry bundles (C2SP tlog-tiles) of whatever signed note and leaves a test
/// sets, over raw HTTP on loopback, until the test process ends.
struct StaticLog {
    url: String,
    state: Arc<Mutex<(String, TiledLog)>>,
    /// Requests for the checkpoint answered.
    hits: Arc<AtomicUsize>,
}

impl StaticLog {
    fn start() -> StaticLog {
        let state = Arc::new(Mutex::new((String::new(), TiledLog::new())));
        let served = Arc::clone(&state);
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        let url = serve_raw_http(move |path| {
            let (note, tiles) = &*served.lock().unwrap();
            let prefix = format!("/{NS}/");
            match path.strip_prefix(&prefix) {
                Some("checkpoint") => {
                    counted.fetch_add(1, Ordering::SeqCst);
                    (200, note.clone().into_bytes())
                }
                Some(tile) => TilePath::parse(tile)
                    .ok()
                    .and_then(|t| tiles.tile(&t, tiles.size()).ok())
                    .map_or((404, Vec::new()), |b| (200, b)),
                None => (404, Vec::new()),
            }
        });
        StaticLog { url, state, hits }
    }

    /// A stand-in serving `note` over `leaves`.
    fn serving(note: &SignedNote, leaves: &[Vec<u8>]) -> StaticLog {
        let log = StaticLog::start();
        log.set(note, leaves);
        log
    }

    /// Serves `note` from now on, over the same leaves.
    fn set_note(&self, note: &SignedNote) {
        self.state.lock().unwrap().0 = note.encode();
    }

    /// Serves `note` over `leaves` from now on.
    fn set(&self, note: &SignedNote, leaves: &[Vec<u8>]) {
        let mut tiles = TiledLog::new();
        for leaf in leaves {
            tiles.append(leaf.clone()).unwrap();
        }
        *self.state.lock().unwrap() = (note.encode(), tiles);
    }
}

/// Node 1 started (and serving) on a [`StaticLog`] serving `note` over
/// `leaves`: the stand-in and the node.
fn serving_on(f: &Fixture, note: &SignedNote, leaves: &[Vec<u8>]) -> (StaticLog, RunningNode) {
    let log = StaticLog::serving(note, leaves);
    let node = start_serving(config_at(f, &log.url));
    (log, node)
}

/// The leaves of `witness`'s log of [`NS`].
fn leaves_of(witness: &Witness<SoftHsm>) -> Vec<Vec<u8>> {
    witness
        .entries(NS)
        .iter()
        .map(|w| leaf_bytes(&w.statement, &w.key, &w.signature).unwrap())
        .collect()
}

/// The fixture's witness after it also signed epoch 2 (into its log, and the
/// evidence for it as `evidence-2.bin`): (its checkpoint at size 1, taken
/// before; its checkpoint at size 2; its two leaves).
fn two_epochs(f: &Fixture) -> (SignedNote, SignedNote, Vec<Vec<u8>>) {
    let dir = f.root().join("witness");
    let at_one = witness_in(&dir).checkpoint(NS, f.now).unwrap();
    f.sign(&f.artifact(2, &[1], &[]), "evidence-2.bin");
    let w = witness_in(&dir);
    (at_one, w.checkpoint(NS, f.now + 2).unwrap(), leaves_of(&w))
}

/// The files in `dir` whose name starts with `prefix`, sorted.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    out.sort();
    out
}

/// R2-1 (re-review of issue 16): the served log is linked to the one the
/// node took before. A replayed older checkpoint (genuinely signed, the
/// evidence's checkpoint still its prefix) is refused at a reload and the
/// node serves on with the newer log.
#[test]
fn r2_1_a_replayed_older_checkpoint_is_refused_on_reload() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let (at_one, at_two, leaves) = two_epochs(&f);
    let (log, node) = serving_on(&f, &at_two, &leaves);
    assert_eq!(node.served_log_size(), Some(2));

    // An on-path attacker replays the size-1 checkpoint and its one leaf.
    log.set(&at_one, &leaves[..1]);
    let e = node
        .reload(config_at(&f, &log.url))
        .expect_err("an older served checkpoint");
    let start = refused_start(&e);
    assert_served_log_error!(
        start,
        Some(ServedLogError::Stale {
            size: 1,
            accepted: 2
        })
    );
    assert_eq!(node.served_log_size(), Some(2), "the newer log is kept");
    assert!(node.is_ready(), "the node keeps serving");
    // A replay is no fork: no evidence files.
    let data = data_dir(&f);
    assert!(files_named(&data, FORK_EVIDENCE_PREFIX).is_empty());

    // The control: the size-2 log again is taken.
    log.set(&at_two, &leaves);
    assert_eq!(node.reload(config_at(&f, &log.url)).unwrap(), 1);
    node.stop().unwrap();
}

/// R2-1: the accepted served checkpoint is kept in the data directory; at a
/// restart, a log signed by the same witness key with another history past
/// the evidence's checkpoint is refused, and both signed notes are kept as
/// evidence files, never overwritten.
#[test]
fn r2_1_a_fork_at_restart_is_refused_and_both_notes_are_kept() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let (_, at_two, leaves) = two_epochs(&f);
    let log = StaticLog::serving(&at_two, &leaves);
    let node = RunningNode::start(config_at(&f, &log.url)).unwrap();
    node.stop().unwrap();
    let data = data_dir(&f);
    assert_eq!(
        std::fs::read_to_string(data.join(SERVED_CHECKPOINT_FILE)).unwrap(),
        at_two.encode(),
        "the accepted checkpoint is kept"
    );

    // The witness's key (its HSM file copied), on another history: the same
    // epoch-1 statement (its leaf is the evidence's), another epoch 2.
    let (forked, forked_leaves) = forked(&f);
    assert_eq!(forked_leaves[0], leaves[0], "the evidence's leaf is shared");
    assert_ne!(forked_leaves[1], leaves[1]);
    log.set(&forked, &forked_leaves);

    let e = RunningNode::start(config_at(&f, &log.url)).unwrap_err();
    let Some(ServedLogError::Fork {
        size: 2,
        accepted: 2,
        evidence: (accepted, served),
    }) = served_log_error(&e)
    else {
        panic!("a fork expected: {}", chain(&e));
    };
    assert_eq!(std::fs::read_to_string(accepted).unwrap(), at_two.encode());
    assert_eq!(std::fs::read_to_string(served).unwrap(), forked.encode());
    assert!(chain(&e).contains(&accepted.display().to_string()));
    assert_eq!(files_named(&data, FORK_EVIDENCE_PREFIX).len(), 2);
    // Refused again: the same pair (R3-5: named by the notes' hash), kept.
    let e2 = RunningNode::start(config_at(&f, &log.url)).unwrap_err();
    let Some(ServedLogError::Fork {
        evidence: again, ..
    }) = served_log_error(&e2)
    else {
        panic!("a fork expected: {}", chain(&e2));
    };
    assert_eq!(again, &(accepted.clone(), served.clone()), "the same pair");
    assert_eq!(files_named(&data, FORK_EVIDENCE_PREFIX).len(), 2);
    assert_eq!(std::fs::read_to_string(accepted).unwrap(), at_two.encode());
    assert_eq!(
        std::fs::read_to_string(data.join(SERVED_CHECKPOINT_FILE)).unwrap(),
        at_two.encode(),
        "the accepted checkpoint is still the one taken"
    );
}

/// R2-2: a start while the witness is down uses the served log the data
/// directory caches, verified again; a tampered cache is refused (nothing
/// else to start from: the start fails, naming the cache and its fault);
/// without a cache the start is refused.
#[test]
fn r2_2_a_start_while_the_witness_is_down_uses_the_verified_cache() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let server = serve_fixture_witness(&f);
    let url = url_of(&server);
    let node = RunningNode::start(config_at(&f, &url)).unwrap();
    node.stop().unwrap();
    server.shutdown();

    // The witness is down: the node starts from its cache, and serves.
    let node = RunningNode::start(config_at(&f, &url)).unwrap();
    assert!(
        node.wait_ready(READY_WAIT),
        "the node serves from the cache"
    );
    assert_eq!(node.served_log_size(), Some(1));
    assert_eq!(node.accepted_epoch(), 1);
    node.stop().unwrap();

    // A changed byte in the cache (the last leaf's signature): its entries no
    // longer hash to its checkpoint's root.
    let data = data_dir(&f);
    let cache = data.join(SERVED_LOG_FILE);
    let good = std::fs::read(&cache).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&cache, &bad).unwrap();
    let e = RunningNode::start(config_at(&f, &url)).unwrap_err();
    assert_served_log_error!(
        &e,
        Some(ServedLogError::BadCache {
            source: CacheError::RootMismatch { size: 1 },
            ..
        })
    );
    assert!(chain(&e).contains(SERVED_LOG_FILE), "{}", chain(&e));

    // No cache: refused, naming the fetch's failure.
    std::fs::remove_file(&cache).unwrap();
    let e = RunningNode::start(config_at(&f, &url)).unwrap_err();
    let Some(ServedLogError::NoCache(fetch)) = served_log_error(&e) else {
        panic!("no cache expected: {}", chain(&e));
    };
    assert!(
        matches!(
            &**fetch,
            ServedLogError::Walk(WalkError::Fetch {
                source: HttpError::Connect { .. },
                ..
            })
        ),
        "{}",
        chain(&e)
    );

    // A fresh data directory has no cache: refused before anything is
    // written, also when the caller is itself on an async runtime (the fetch
    // runs on its own thread: blocking this runtime's thread on another
    // runtime would panic).
    std::fs::remove_dir_all(&data).unwrap();
    let e = RunningNode::start(config_at(&f, &url)).unwrap_err();
    assert_served_log_error!(&e, Some(ServedLogError::Walk(_)));
    assert!(!data.exists(), "nothing written");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = config_at(&f, &url);
    let e = runtime
        .block_on(async move { RunningNode::start(config) })
        .unwrap_err();
    assert_served_log_error!(&e, Some(ServedLogError::Walk(_)));
}

/// R2-3: the served checkpoint must be signed by a pinned witness key valid
/// now (from its `not_before` until the next pinned key's), as the bundle's
/// checkpoint must. Here `witness-1` retired when `witness-2` started; a
/// served checkpoint signed by `witness-1` only is refused.
#[test]
fn r2_3_a_served_checkpoint_signed_only_by_a_retired_key_is_refused() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let dir = f.root().join("rotating");
    std::fs::create_dir_all(&dir).unwrap();
    let rotated = f.now - 100;
    let mut w = Witness::open(
        SoftHsm::open(dir.join("witness.hsm")).unwrap(),
        vec![
            WitnessKeySpec {
                name: "witness-1".into(),
                not_before: 0,
            },
            WitnessKeySpec {
                name: "witness-2".into(),
                not_before: rotated,
            },
        ],
        dir.join("witness.state"),
    )
    .unwrap();
    // Epoch 1 and the evidence's checkpoint signed by witness-2 (the bundle
    // verifier wants the keys of both valid now); witness-1 signs a
    // checkpoint of the same log, dated before it retired.
    let a1 = f.artifact(1, &[1], &[]);
    let witnessed = w.sign(NS, 1, a1.digest().unwrap(), f.now - 50).unwrap();
    assert_eq!(witnessed.key, "witness-2");
    let operator = SoftHsm::open(f.root().join("operator.hsm")).unwrap();
    let cs = countersign(&operator, "operator", &witnessed).unwrap();
    let proof = w.tree(NS).unwrap().inclusion_proof(0, 1).unwrap();
    let current = w.checkpoint(NS, f.now).unwrap();
    let retired = w.checkpoint(NS, f.now - 150).unwrap();
    assert_eq!(current.signatures[0].name, "witness-2");
    assert_eq!(retired.signatures[0].name, "witness-1");
    let bundle = Bundle::assemble(a1.encode().unwrap(), &witnessed, cs, proof, &current)
        .encode()
        .unwrap();
    let evidence = dir.join("evidence.bin");
    std::fs::write(&evidence, common::evidence_of(bundle, &a1)).unwrap();
    let (w1, w2) = (
        w.public_key("witness-1").unwrap(),
        w.public_key("witness-2").unwrap(),
    );
    let leaves = leaves_of(&w);
    drop(w);
    let edit = |t: String| {
        let t = with_evidence(&f, t, &evidence).replacen(&hex(&f.witness_public), &hex(&w1), 1);
        with_table(
            t,
            "witness_key",
            &format!(
                "name = \"witness-2\"\npublic_key = \"{}\"\nnot_before = {rotated}",
                hex(&w2)
            ),
        )
    };

    let log = StaticLog::serving(&retired, &leaves);
    let e = RunningNode::start(config_with(&f, &log.url, edit)).unwrap_err();
    assert_served_log_error!(&e, Some(ServedLogError::Walk(WalkError::Unsigned)));
    assert_nothing_written(&f);

    // The control: the same log, its checkpoint signed by witness-2.
    log.set(&current, &leaves);
    let node = RunningNode::start(config_with(&f, &log.url, edit)).unwrap();
    node.stop().unwrap();
}

/// The fixture's witness's checkpoint of [`NS`] (at the fixture's time) and
/// its log's leaves.
fn fixture_log(f: &Fixture) -> (SignedNote, Vec<Vec<u8>>) {
    let w = fixture_witness(f);
    (w.checkpoint(NS, f.now).unwrap(), leaves_of(&w))
}

/// The name of [`PinnedCosigner`].
const COSIGNER: &str = "cosigner.example/c1";

/// A cosigner ([`COSIGNER`], its key `c1` in the fixture's `cosigner.hsm`)
/// that node 1 can be configured to pin and require.
struct PinnedCosigner {
    hsm: SoftHsm,
    key: KeyHandle,
    public: [u8; 32],
}

impl PinnedCosigner {
    fn new(f: &Fixture) -> PinnedCosigner {
        let hsm = SoftHsm::open(f.root().join("cosigner.hsm")).unwrap();
        let key = hsm.key("c1", KeyKind::Signing).unwrap();
        let public = hsm.public_key(key).unwrap();
        PinnedCosigner { hsm, key, public }
    }

    /// Its cosignature line of the checkpoint `text` at `timestamp`.
    fn cosign(&self, text: &str, timestamp: u64) -> NoteSignature {
        cosign(&self.hsm, self.key, COSIGNER, text, timestamp).unwrap()
    }

    /// `note` with its cosignature at `timestamp` added.
    fn cosigned(&self, note: &SignedNote, timestamp: u64) -> SignedNote {
        let mut note = note.clone();
        note.signatures.push(self.cosign(&note.text, timestamp));
        note
    }

    /// Writes the fixture's evidence with its bundle's checkpoint replaced by
    /// `checkpoint` (as `evidence-cosigned.bin`); the config edit reading
    /// that evidence, pinning this cosigner and requiring one cosignature.
    fn config_edit<'a>(
        &'a self,
        f: &'a Fixture,
        checkpoint: &SignedNote,
    ) -> impl Fn(String) -> String + 'a {
        let mut evidence =
            Evidence::decode(&std::fs::read(f.root().join("evidence.bin")).unwrap()).unwrap();
        let mut bundle = Bundle::decode(&evidence.bundle).unwrap();
        bundle.checkpoint = checkpoint.encode();
        evidence.bundle = bundle.encode().unwrap();
        let path = f.root().join("evidence-cosigned.bin");
        std::fs::write(&path, evidence.encode().unwrap()).unwrap();
        move |t: String| {
            let t = with_evidence(f, t, &path).replacen(
                "operator_key = ",
                "cosigners_required = 1\noperator_key = ",
                1,
            );
            with_table(
                t,
                "cosigner",
                &format!(
                    "name = \"{COSIGNER}\"\npublic_key = \"{}\"",
                    hex(&self.public)
                ),
            )
        }
    }
}

/// R2-3: a node requiring cosigners requires them on the served checkpoint
/// too: C2SP tlog-witness "The cosignature MUST NOT omit the timestamp, i.e.
/// the timestamp MUST NOT be zero." (a zero-timestamp cosignature does not
/// count).
#[test]
fn r2_3_a_served_checkpoint_without_the_required_cosignatures_is_refused() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let c = PinnedCosigner::new(&f);
    let (plain, leaves) = fixture_log(&f);
    let cosigned = c.cosigned(&plain, f.now);
    // The evidence's checkpoint, cosigned.
    let edit = c.config_edit(&f, &cosigned);

    let log = StaticLog::start();
    for (note, found) in [(&plain, 0), (&c.cosigned(&plain, 0), 0)] {
        log.set(note, &leaves);
        let e = RunningNode::start(config_with(&f, &log.url, &edit)).unwrap_err();
        assert_served_log_error!(&e, Some(&ServedLogError::TooFewCosignatures { found: n, required: 1 }) if n == found);
    }
    assert_nothing_written(&f);

    // The control: the cosigned checkpoint is taken.
    log.set(&cosigned, &leaves);
    let node = RunningNode::start(config_with(&f, &log.url, edit)).unwrap();
    node.stop().unwrap();
}

/// R2-4: a stop arriving while a reload waits on a witness that accepts the
/// connection and never answers ends the signal loop at once (the fetch is
/// abandoned), not after the fetch's deadline
/// ([`vaultfleet_tlog::walk::FETCH_TIMEOUT`], 20 s per request); reloads
/// queued together run once.
#[test]
fn r2_4_a_stop_during_a_slow_reload_fetch_is_prompt() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let server = serve_fixture_witness(&f);
    let node = start_serving(config_at(&f, &url_of(&server)));

    // A witness that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in silent.incoming() {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
    }
    let config = config_named(&f, &silent_url, "silent.toml", |t| t);

    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..3 {
        tx.send(NodeSignal::Reload).unwrap();
    }
    let reloads = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::new());
    let (cause, asked) = std::thread::scope(|s| {
        let stopper = s.spawn(|| {
            wait_until(
                "the reload never reached the witness",
                Duration::from_millis(10),
                || accepted.load(Ordering::SeqCst) != 0,
            );
            let asked = Instant::now();
            tx.send(NodeSignal::Terminate).unwrap();
            asked
        });
        let cause = serve_signals(
            &node,
            &rx,
            |n| {
                reloads.fetch_add(1, Ordering::SeqCst);
                outcomes.lock().unwrap().push(n.reload(config.clone()));
            },
            |_| {},
        );
        (cause, stopper.join().unwrap())
    });
    let took = asked.elapsed();
    assert_eq!(cause, Some(NodeSignal::Terminate));
    // A correctness bound, not a speed one: without the cancel the loop ends
    // only when the silent fetch times out (20 s).
    assert!(took < Duration::from_secs(10), "the stop waited {took:?}");
    assert_eq!(reloads.load(Ordering::SeqCst), 1, "queued reloads collapse");
    let outcomes = outcomes.into_inner().unwrap();
    let Some(Err(ReloadError::Start(start))) = outcomes.first() else {
        panic!("a refused reload expected: {outcomes:?}");
    };
    assert_served_log_error!(start, Some(ServedLogError::Cancelled));
    assert_eq!(node.served_log_size(), Some(1), "the log in use is kept");
    node.stop().unwrap();
    server.shutdown();
}

/// The fixture's witness key (its HSM file copied) on another history: the
/// same epoch-1 statement (the evidence's leaf), another epoch 2. Its
/// checkpoint at size 2 and its leaves.
fn forked(f: &Fixture) -> (SignedNote, Vec<Vec<u8>>) {
    let mut twin = twin_witness(f);
    let a1 = f.artifact(1, &[1], &[]);
    twin.sign(NS, 1, a1.digest().unwrap(), f.now).unwrap();
    let mut evil = f.artifact(2, &[1], &[]);
    evil.fleet_id = "evil-fleet".into();
    twin.sign(NS, 2, evil.digest().unwrap(), f.now + 2).unwrap();
    (twin.checkpoint(NS, f.now + 2).unwrap(), leaves_of(&twin))
}

/// R3-1 (third review of issue 16): a reload checks the served log against
/// the accepted checkpoint on disk as well as the one in use. Here the disk
/// is ahead (size 2, as a reload that kept it and then failed to swap left
/// it): a replay of the size-1 checkpoint, which the log in use (size 1)
/// alone would take, is refused, and the disk keeps size 2.
#[test]
fn r3_1_a_reload_checks_the_accepted_checkpoint_on_disk_too() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let (at_one, at_two, leaves) = two_epochs(&f);
    let (log, node) = serving_on(&f, &at_one, &leaves[..1]);
    assert_eq!(node.served_log_size(), Some(1));
    let data = data_dir(&f);
    std::fs::write(data.join(SERVED_CHECKPOINT_FILE), at_two.encode()).unwrap();

    let e = node
        .reload(config_at(&f, &log.url))
        .expect_err("a checkpoint older than the one on disk");
    let start = refused_start(&e);
    assert_served_log_error!(
        start,
        Some(ServedLogError::Stale {
            size: 1,
            accepted: 2
        })
    );
    assert_eq!(
        std::fs::read_to_string(data.join(SERVED_CHECKPOINT_FILE)).unwrap(),
        at_two.encode(),
        "the disk does not go back"
    );
    assert_eq!(node.served_log_size(), Some(1));

    // The control: the size-2 log extends both, and is taken.
    log.set(&at_two, &leaves);
    assert_eq!(node.reload(config_at(&f, &log.url)).unwrap(), 1);
    assert_eq!(node.served_log_size(), Some(2));
    node.stop().unwrap();
}

/// R3-2: the served log's files are written only once the store (the data
/// directory's lock) is open: a second node started on a live node's data
/// directory fails on the lock without touching them, even with a newer
/// served log to take.
#[test]
fn r3_2_a_second_node_on_a_live_data_directory_writes_no_served_log() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let (at_one, at_two, leaves) = two_epochs(&f);
    let (log, node) = serving_on(&f, &at_one, &leaves[..1]);
    let data = data_dir(&f);
    let before = (
        std::fs::read(data.join(SERVED_CHECKPOINT_FILE)).unwrap(),
        std::fs::read(data.join(SERVED_LOG_FILE)).unwrap(),
    );

    log.set(&at_two, &leaves);
    let e = RunningNode::start(config_named(&f, &log.url, "second.toml", |t| t)).unwrap_err();
    assert!(matches!(e, StartError::Store { .. }), "{}", chain(&e));
    assert_eq!(
        (
            std::fs::read(data.join(SERVED_CHECKPOINT_FILE)).unwrap(),
            std::fs::read(data.join(SERVED_LOG_FILE)).unwrap(),
        ),
        before,
        "the live node's served log files are untouched"
    );
    node.stop().unwrap();
}

/// R3-2: two reloads at once (a served log answering size 2 to the first
/// and size 1 to the second): they run one after the other, the second
/// refused, and the accepted checkpoint on disk never goes back.
#[test]
fn r3_2_concurrent_reloads_never_take_the_disk_back() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let (at_one, at_two, leaves) = two_epochs(&f);
    let (log, node) = serving_on(&f, &at_one, &leaves[..1]);
    let data = data_dir(&f);
    log.set(&at_two, &leaves);
    let config = config_at(&f, &log.url);
    let done = std::sync::atomic::AtomicBool::new(false);
    let outcomes = std::thread::scope(|s| {
        // Watches the disk while the reloads run.
        let watch = s.spawn(|| {
            let mut sizes = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if let Ok(text) = std::fs::read_to_string(data.join(SERVED_CHECKPOINT_FILE)) {
                    sizes.push(text.lines().nth(1).unwrap_or("").to_string());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sizes
        });
        let first = s.spawn(|| node.reload(config.clone()));
        // The second starts once the first took the size-2 checkpoint (the
        // start took the first one); the tiles of size 2 serve both.
        wait_until(
            "the first reload never fetched",
            Duration::from_millis(1),
            || log_hits(&log) >= 2,
        );
        log.set_note(&at_one);
        let second = s.spawn(|| node.reload(config.clone()));
        let outcomes = (first.join().unwrap(), second.join().unwrap());
        done.store(true, Ordering::SeqCst);
        let sizes = watch.join().unwrap();
        let two = sizes.iter().position(|s| s == "2");
        if let Some(at) = two {
            assert!(
                sizes[at..].iter().all(|s| s == "2"),
                "the disk went back: {sizes:?}"
            );
        }
        outcomes
    });
    assert_eq!(outcomes.0.as_ref().ok(), Some(&1), "{:?}", outcomes.0);
    assert!(
        outcomes.1.is_err(),
        "the older log refused: {:?}",
        outcomes.1
    );
    assert_eq!(
        std::fs::read_to_string(data.join(SERVED_CHECKPOINT_FILE)).unwrap(),
        at_two.encode()
    );
    assert_eq!(node.served_log_size(), Some(2));
    node.stop().unwrap();
}

/// How many requests [`StaticLog`] answered (stand-in: whether its
/// checkpoint was asked for; see `StaticLog::start`).
fn log_hits(log: &StaticLog) -> usize {
    log.hits.load(Ordering::SeqCst)
}

/// R3-4: a reload that panics while a stop arrives does not turn the stop
/// into a panic: the signal loop joins it by hand, logs it, and returns the
/// stop, and the node stops cleanly.
#[test]
fn r3_4_a_reload_panicking_during_a_stop_does_not_abort_the_stop() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let server = serve_fixture_witness(&f);
    let node = start_serving(config_at(&f, &url_of(&server)));
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(NodeSignal::Reload).unwrap();
    let started = std::sync::atomic::AtomicBool::new(false);
    let cause = std::thread::scope(|s| {
        s.spawn(|| {
            wait_until("the reload never started", Duration::from_millis(5), || {
                started.load(Ordering::SeqCst)
            });
            tx.send(NodeSignal::Terminate).unwrap();
        });
        serve_signals(
            &node,
            &rx,
            |_| {
                started.store(true, Ordering::SeqCst);
                // Still running when the stop arrives.
                std::thread::sleep(Duration::from_millis(300));
                panic!("a reload panics (on purpose, R3-4)");
            },
            |_| {},
        )
    });
    assert_eq!(cause, Some(NodeSignal::Terminate));
    node.stop().unwrap();
    server.shutdown();
}

/// R3-5: fork evidence is bounded: past [`FORK_EVIDENCE_PAIRS_MAX`] pairs a
/// new fork is still refused, its notes not written.
#[test]
fn r3_5_fork_evidence_is_capped() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let (_, at_two, leaves) = two_epochs(&f);
    let log = StaticLog::serving(&at_two, &leaves);
    RunningNode::start(config_at(&f, &log.url))
        .unwrap()
        .stop()
        .unwrap();
    let data = data_dir(&f);
    let (fork, fork_leaves) = forked(&f);
    log.set(&fork, &fork_leaves);
    for i in 0..FORK_EVIDENCE_PAIRS_MAX {
        for end in ["accepted", "served"] {
            std::fs::write(
                data.join(format!("{FORK_EVIDENCE_PREFIX}{i:032x}.{end}.note")),
                "earlier",
            )
            .unwrap();
        }
    }
    let e = RunningNode::start(config_at(&f, &log.url)).unwrap_err();
    assert_served_log_error!(&e, Some(&ServedLogError::ForkNotKept { size: 2, accepted: 2, kept, .. }) if kept == FORK_EVIDENCE_PAIRS_MAX);
    assert_eq!(
        files_named(&data, FORK_EVIDENCE_PREFIX).len(),
        2 * FORK_EVIDENCE_PAIRS_MAX,
        "nothing more written"
    );
}

/// R3-6: the served checkpoint's cosignatures are checked as the bundle's
/// are: a line under a pinned cosigner's name and key ID that does not
/// verify refuses the note, even beside one of its lines that does (C2SP
/// signed-note: "If the key name and ID match a known key, verifiers MUST
/// verify the signature").
#[test]
fn r3_6_a_bad_line_by_a_pinned_cosigner_refuses_the_served_checkpoint() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let c = PinnedCosigner::new(&f);
    let (plain, leaves) = fixture_log(&f);
    let cosigned = c.cosigned(&plain, f.now);
    let edit = c.config_edit(&f, &cosigned);
    // The pinned cosigner's line of another text (the size edited), under
    // its name and key ID, after its good line.
    let edited = plain.text.replacen("\n1\n", "\n2\n", 1);
    assert_ne!(edited, plain.text);
    let mut bad = cosigned.clone();
    bad.signatures.push(c.cosign(&edited, f.now));

    let log = StaticLog::serving(&bad, &leaves);
    let e = RunningNode::start(config_with(&f, &log.url, &edit)).unwrap_err();
    assert_served_log_error!(&e, Some(ServedLogError::Cosignature(BundleError::BadCosignature { cosigner, .. })) if cosigner == COSIGNER);
    assert_nothing_written(&f);
    // The control: without the bad line it is taken.
    log.set(&cosigned, &leaves);
    let node = RunningNode::start(config_with(&f, &log.url, edit)).unwrap();
    node.stop().unwrap();
}
