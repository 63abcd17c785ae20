//! A node following the witness's log as the witness serves it
//! (`[vault] witness_log_url`, C2SP tlog-tiles over HTTP, `vaultfleet-tlog`'s
//! `LogServer` in process on loopback):
//!
//! * (a) the served log holding the evidence's checkpoint: the node starts and
//!   serves; the log grows (a new epoch submitted) and a reload takes the
//!   longer log, its root at the evidence's size unchanged;
//! * (b) the witness stopped: a reload fails and the node serves on as before;
//!   a start is refused (also when called from inside an async runtime);
//! * (c) a forked witness (the same key, another history): refused, the
//!   served log's root at the evidence's size is not the evidence's;
//! * (d) a served checkpoint not signed by the pinned witness key: refused.
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

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{chain, Fixture, NS, READY_WAIT};
use vaultfleet::SoftHsm;
use vaultfleet_audit::note::NoteVerifier;
use vaultfleet_audit::submission::Submission;
use vaultfleet_audit::{Witness, WitnessKeySpec};
use vaultfleet_node::config::NodeConfig;
use vaultfleet_node::run::{ReloadError, RunningNode, ServedLogError, StartError};
use vaultfleet_tlog::walk::{block_on, fetch_log, WalkError};
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

/// Serves `witness`'s log on loopback, taking submissions signed by the
/// fixture's operator.
fn serve(f: &Fixture, witness: Witness<SoftHsm>) -> LogServer {
    LogServer::start(
        witness,
        LogConfig::new("127.0.0.1:0".parse().unwrap(), f.operator_public),
    )
    .unwrap()
}

fn url_of(server: &LogServer) -> String {
    format!("http://{}", server.local_addr())
}

/// Node 1's config (a one-voter fleet), reading the witness's log at `url`
/// instead of the fixture's log file; written as `name`.
fn config_at(f: &Fixture, url: &str, name: &str) -> NodeConfig {
    let text = f.config_text(1, &[1], None, None);
    let file_line = format!("witness_log = \"{}\"\n", f.witness_log().display());
    assert!(
        text.contains(&file_line),
        "the fixture's config reads the file"
    );
    let text = text.replacen(&file_line, &format!("witness_log_url = \"{url}\"\n"), 1);
    NodeConfig::load(&f.write_config(1, name, &text)).unwrap()
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

#[test]
fn a_node_follows_the_served_log_and_keeps_serving_when_the_witness_goes_down() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let server = serve(&f, witness_in(&f.root().join("witness")));
    let url = url_of(&server);

    // (a) The served log holds the evidence's checkpoint: the node starts.
    let node = RunningNode::start(config_at(&f, &url, "node.toml")).unwrap();
    assert!(node.wait_ready(READY_WAIT), "the node serves");
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while block_on(fetch_log(&base, NS))
        .unwrap()
        .map_or(0, |log| log.checkpoint.size)
        != 2
    {
        assert!(Instant::now() < deadline, "the served log never grew to 2");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A reload takes the longer log: the evidence's checkpoint (size 1) is
    // its prefix.
    assert_eq!(node.reload(config_at(&f, &url, "node.toml")).unwrap(), 1);

    // (b) The witness goes down: a reload fails, naming the fetch, and the
    // node serves on as before.
    server.shutdown();
    let e = node
        .reload(config_at(&f, &url, "node.toml"))
        .expect_err("a reload without the served log");
    let ReloadError::Start(start) = &e else {
        panic!("a refused start inside the reload expected, got {e:?}");
    };
    assert!(
        matches!(
            served_log_error(start),
            Some(ServedLogError::Walk(WalkError::Fetch {
                source: HttpError::Connect { .. },
                ..
            }))
        ),
        "{}",
        chain(&e)
    );
    assert!(chain(&e).contains(&url), "{}", chain(&e));
    assert_eq!(node.accepted_epoch(), 1);
    assert!(node.is_ready(), "the node keeps serving what it had");
    node.stop().unwrap();

    // A start is refused, before anything is written ...
    let data = f.root().join("node-1").join("data");
    let before = common::snapshot(&data);
    let e = RunningNode::start(config_at(&f, &url, "node.toml")).unwrap_err();
    assert!(
        matches!(served_log_error(&e), Some(ServedLogError::Walk(_))),
        "{}",
        chain(&e)
    );
    assert_eq!(common::snapshot(&data), before, "nothing written");
    // ... also when the caller is itself on an async runtime (the fetch runs
    // on its own thread: blocking this runtime's thread on another runtime
    // would panic).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = config_at(&f, &url, "node.toml");
    let e = runtime
        .block_on(async move { RunningNode::start(config) })
        .unwrap_err();
    assert!(
        matches!(served_log_error(&e), Some(ServedLogError::Walk(_))),
        "{}",
        chain(&e)
    );
}

#[test]
fn a_served_log_from_a_forked_witness_is_refused() {
    let f = Fixture::new(&[(1, "dc-a")]);
    // The witness's key (its HSM file copied), on another history: epoch 1
    // there is another fleet's artifact, and the log is longer (epoch 2).
    let fork = f.root().join("fork");
    std::fs::create_dir_all(&fork).unwrap();
    std::fs::copy(
        f.root().join("witness").join("witness.hsm"),
        fork.join("witness.hsm"),
    )
    .unwrap();
    let mut twin = witness_in(&fork);
    assert_eq!(twin.public_key("witness-1").unwrap(), f.witness_public);
    let mut evil = f.artifact(1, &[1], &[]);
    evil.fleet_id = "evil-fleet".into();
    twin.sign(NS, 1, evil.digest().unwrap(), f.now).unwrap();
    let a2 = f.artifact(2, &[1], &[]);
    twin.sign(NS, 2, a2.digest().unwrap(), f.now + 2).unwrap();
    let server = serve(&f, twin);

    let e = RunningNode::start(config_at(&f, &url_of(&server), "node.toml")).unwrap_err();
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
    assert!(
        !f.root().join("node-1").join("data").exists(),
        "nothing written"
    );

    // The control: the fixture's own witness, served, is taken.
    server.shutdown();
    let server = serve(&f, witness_in(&f.root().join("witness")));
    let node = RunningNode::start(config_at(&f, &url_of(&server), "node.toml")).unwrap();
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

    let e = RunningNode::start(config_at(&f, &url_of(&server), "node.toml")).unwrap_err();
    assert!(
        matches!(
            served_log_error(&e),
            Some(ServedLogError::Walk(WalkError::Unsigned))
        ),
        "{}",
        chain(&e)
    );
    assert!(
        chain(&e).contains("not signed by a pinned witness key"),
        "{}",
        chain(&e)
    );
    assert!(
        !f.root().join("node-1").join("data").exists(),
        "nothing written"
    );
    server.shutdown();
}
