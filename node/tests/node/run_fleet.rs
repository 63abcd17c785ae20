//! Three running nodes in one process over loopback TCP: every node's vault
//! service serves (a follower's proposes through the leader, as a service
//! client proving its transport key, which the peers pin as a peer's and
//! allow as a service client's), and a stopping leader hands leadership over
//! while the others keep serving what was acknowledged. A reload (SIGHUP)
//! takes new pins and refuses what needs a restart.
// Tests of sockets and processes run in wall-clock time, every wait bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{evidence_of, Fixture, FLEET, GROUP, READY_WAIT};
use vaultfleet::replica::{ConfChangeRejection, HostHealth};
use vaultfleet::RequestError;
use vaultfleet_audit::fleet::evidence::Evidence;
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::{Bundle, BundleError};
use vaultfleet_net::open::OpenClientConfig;
use vaultfleet_net::{PeerDirectory, PeerEntry, StaticSecret};
use vaultfleet_node::admin::{Admin, AdminError, AdminOptions};
use vaultfleet_node::config::{NodeConfig, Runtime};
use vaultfleet_node::hsm::{hex, parse_public_key};
use vaultfleet_node::run::{ArtifactMismatch, ReloadError, RunningNode, StartError, EPOCH_FILE};
use vaultfleet_vault::{
    BundleTrust, KsfParams, RemoteVaultEndpoint, ServerTrust, VaultClient, VaultClientConfig,
    VaultEndpoint,
};

/// `127.A.B.id:port`, with `A.B` from this process's id (tests in other
/// processes pick other addresses).
fn address(id: u64, port: u16) -> SocketAddr {
    let pid = std::process::id();
    let a = 100 + (pid % 100) as u8;
    let b = 1 + ((pid / 100) % 250) as u8;
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, a, b, u8::try_from(id).unwrap()),
        port,
    ))
}

/// A vault client reaching only replica `id` at `address`.
fn client(f: &Fixture, id: u64, address: SocketAddr) -> VaultClient {
    let now = f.now;
    let trust = BundleTrust::new(f.verifier.clone(), Arc::new(move || now));
    VaultClient::with_verifier(
        vec![Arc::new(
            RemoteVaultEndpoint::new(
                id,
                address,
                FLEET,
                ServerTrust::Bundles(trust),
                OpenClientConfig::default(),
            )
            .unwrap(),
        ) as Arc<dyn VaultEndpoint>],
        GROUP,
        f.verifier.clone(),
        Arc::new(move || now),
        VaultClientConfig {
            ksf: KsfParams::TESTS_ONLY,
            backoff: Duration::from_millis(50),
            rounds: 10,
            ..VaultClientConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn every_node_serves_and_a_stopping_leader_hands_over() {
    // The config's default runtime: the pool.
    every_node_serves_and_a_stopping_leader_hands_over_on(None, 7100);
}

#[test]
fn every_node_serves_and_a_stopping_leader_hands_over_on_threads() {
    every_node_serves_and_a_stopping_leader_hands_over_on(Some(Runtime::Threads), 7110);
}

fn every_node_serves_and_a_stopping_leader_hands_over_on(runtime: Option<Runtime>, port: u16) {
    let mut f = Fixture::new(&[(1, "dc-a"), (2, "dc-b"), (3, "dc-c")]);
    for id in 1..=3 {
        f.addresses
            .insert(id, (address(id, port), address(id, port + 100)));
    }
    let mut nodes: Vec<RunningNode> = (1..=3)
        .map(|id| {
            let path = f.write_config(id, "node.toml", &f.config_text(id, &[1, 2, 3], None, None));
            let mut config = NodeConfig::load(&path).unwrap();
            assert_eq!(config.runtime, Runtime::Pool, "the default");
            if let Some(runtime) = runtime {
                config.runtime = runtime;
            }
            RunningNode::start(config).unwrap()
        })
        .collect();
    for n in &nodes {
        assert!(n.wait_ready(READY_WAIT), "replica {} serves", n.replica());
    }
    // Every node's own service answers, the followers' through the leader.
    for n in &nodes {
        let id = n.replica();
        let c = client(&f, id, n.vault_addr());
        let user = format!("user-of-{id}");
        let r = c.register(user.as_bytes(), b"code", b"secret");
        assert!(matches!(r, Ok(1)), "replica {id}: {r:?}");
    }

    // The leader stops gracefully: leadership moves, the others serve on.
    let leader = nodes[0].status().leader.expect("a leader");
    let at = nodes.iter().position(|n| n.replica() == leader).unwrap();
    let stopping = nodes.remove(at);
    stopping.stop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        loop {
            let now_leader = n.status().leader;
            if now_leader.is_some_and(|l| l != leader) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} knows no new leader",
                n.replica()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for n in &nodes {
        let c = client(&f, n.replica(), n.vault_addr());
        for id in 1..=3 {
            let user = format!("user-of-{id}");
            let r = c.recover(user.as_bytes(), b"code");
            assert!(
                matches!(&r, Ok(s) if s.as_slice() == b"secret"),
                "replica {} for {user}: {r:?}",
                n.replica()
            );
        }
    }
    for n in nodes {
        n.stop().unwrap();
    }
}

#[test]
fn a_reload_takes_new_pins_and_refuses_what_needs_a_restart() {
    let f = Fixture::new(&[(1, "dc-a"), (2, "dc-b")]);
    let text = f.config_text(1, &[1], None, None);
    let path = f.write_config(1, "node.toml", &text);
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    assert_eq!(node.accepted_epoch(), 1);

    // The same files, and a new [[peer]] (replica 2, as epoch 1 lists it).
    assert_eq!(node.reload(NodeConfig::load(&path).unwrap()).unwrap(), 1);
    let path = f.write_config(1, "more.toml", &f.config_text(1, &[1, 2], None, None));
    assert_eq!(node.reload(NodeConfig::load(&path).unwrap()).unwrap(), 1);

    // What only a restart changes is refused, naming the setting.
    let moved = text.replace("[timing]\ntick_ms = 10", "[timing]\ntick_ms = 20");
    assert_ne!(moved, text);
    let path = f.write_config(1, "moved.toml", &moved);
    let e = node.reload(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(matches!(e, ReloadError::Fixed { field: "timing" }), "{e:?}");
    // Streamed snapshots take a restart too.
    let streamed = format!("streamed_snapshots = true\n{text}");
    let path = f.write_config(1, "streamed.toml", &streamed);
    let e = node.reload(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            ReloadError::Fixed {
                field: "streamed_snapshots"
            }
        ),
        "{e:?}"
    );
    // A [[peer]] table disagreeing with the accepted artifact is refused.
    let (_, key_1) = &f.replicas[&1];
    let (_, key_2) = &f.replicas[&2];
    let wrong = f
        .config_text(1, &[1, 2], None, None)
        .replacen(key_2.as_str(), &"ab".repeat(32), 1);
    assert!(wrong.contains(key_1.as_str()));
    let path = f.write_config(1, "wrong.toml", &wrong);
    let e = node.reload(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            ReloadError::Start(StartError::Artifact {
                source: ArtifactMismatch::Peer { id: 2, .. },
                ..
            })
        ),
        "{e:?}"
    );

    // It serves on.
    let c = client(&f, 1, node.vault_addr());
    assert!(matches!(
        c.register(b"after-reloads", b"code", b"secret"),
        Ok(1)
    ));
    node.stop().unwrap();
}

#[test]
fn a_node_with_streamed_snapshots_opens_its_sealed_snapshot_files_and_serves() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let text = format!(
        "streamed_snapshots = true\n{}",
        f.config_text(1, &[1], None, None)
    );
    let path = f.write_config(1, "node.toml", &text);
    let config = NodeConfig::load(&path).unwrap();
    assert!(config.streamed_snapshots);
    let files = config
        .data_dir
        .join(vaultfleet_node::run::LOG_DIR)
        .join(vaultfleet::storage::SNAPSHOT_DIR);
    assert!(!files.exists());
    let node = RunningNode::start(config).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    assert!(
        files.is_dir(),
        "the store's snapshot files are open: {files:?}"
    );
    let c = client(&f, 1, node.vault_addr());
    assert!(matches!(c.register(b"streamed", b"code", b"secret"), Ok(1)));
    node.stop().unwrap();
}

#[test]
fn a_node_whose_disk_does_not_answer_stops_serving_until_it_does() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let path = f.write_config(1, "node.toml", &f.config_text(1, &[1], None, None));
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    // The disk check's file becomes a folder: writing it fails (even as root).
    let check = f
        .root()
        .join("node-1")
        .join("data")
        .join(vaultfleet_node::run::HEALTH_FILE);
    // (The watch may write the file between the removal and the folder.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::create_dir(&check).is_err() {
        assert!(Instant::now() < deadline);
        let _ = std::fs::remove_file(&check);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.is_ready() {
        assert!(
            Instant::now() < deadline,
            "a failing disk makes the node unready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(node.probe().disk_health().is_err());
    let c = client(&f, 1, node.vault_addr());
    assert!(
        c.register(b"while-the-disk-fails", b"code", b"secret")
            .is_err(),
        "no vault request is answered while the disk fails"
    );
    std::fs::remove_dir(&check).unwrap();
    assert!(node.wait_ready(Duration::from_secs(10)), "ready again");
    assert!(matches!(c.register(b"after", b"code", b"secret"), Ok(1)));
    node.stop().unwrap();
}

/// An admin handle proving `secret` to node 1 only.
fn admin_of(f: &Fixture, node: &RunningNode, secret: StaticSecret) -> Admin {
    let mut d = PeerDirectory::client(FLEET, secret).unwrap();
    d.insert(
        1,
        PeerEntry {
            address: node.peer_addr(),
            datacenter: f.replicas[&1].0.clone(),
            public_key: parse_public_key(&f.replicas[&1].1).unwrap(),
        },
    )
    .unwrap();
    let mut o = AdminOptions::default();
    o.status_wait = Duration::from_secs(2);
    o.call_timeout = Duration::from_secs(10);
    o.remote.status_interval = Duration::from_millis(50);
    Admin::new(d, GROUP, o).unwrap()
}

/// Whether `secret`'s holder gets replica 1's status over a client session.
fn has_session(f: &Fixture, node: &RunningNode, secret: &StaticSecret) -> bool {
    let admin = admin_of(f, node, secret.clone());
    let reports = admin.status(Some(1)).expect("a status call reports");
    reports.iter().any(|r| r.status.is_some())
}

/// Asks node 1 for its status through `admin` until its host health is
/// `want`, for at most ten seconds; the last health seen otherwise.
fn wait_host_health(admin: &Admin, want: HostHealth) -> Result<(), Option<HostHealth>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while Instant::now() < deadline {
        let reports = admin.status(Some(1)).expect("a status call reports");
        seen = reports
            .iter()
            .find_map(|r| r.status.as_ref())
            .map(|s| s.host)
            .or(seen);
        if seen == Some(want) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(seen)
}

#[test]
fn admin_status_reports_the_hsm_and_a_failing_disk_as_the_health_watch_finds_them() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let admin_key = StaticSecret::generate().unwrap();
    let text = with_admin(&f.config_text(1, &[1], None, None), &admin_key);
    let path = f.write_config(1, "node.toml", &text);
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    let admin = admin_of(&f, &node, admin_key);
    let ok = HostHealth {
        hsm: Some(true),
        disk: Some(true),
    };
    assert_eq!(wait_host_health(&admin, ok), Ok(()), "hsm ok, disk ok");
    // The disk check's file becomes a folder: writing it fails for real
    // (even as root, who ignores a read-only mode on the data directory).
    let check = f
        .root()
        .join("node-1")
        .join("data")
        .join(vaultfleet_node::run::HEALTH_FILE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::create_dir(&check).is_err() {
        assert!(Instant::now() < deadline);
        let _ = std::fs::remove_file(&check);
    }
    let failing = HostHealth {
        hsm: Some(true),
        disk: Some(false),
    };
    assert_eq!(
        wait_host_health(&admin, failing),
        Ok(()),
        "the admin's status shows the failing disk (and the HSM still ok)"
    );
    assert_eq!(node.status().host, failing);
    std::fs::remove_dir(&check).unwrap();
    assert_eq!(
        wait_host_health(&admin, ok),
        Ok(()),
        "disk ok again once it takes writes"
    );
    node.stop().unwrap();
}

/// `text` with an `[[admin_key]]` table for `secret`.
fn with_admin(text: &str, secret: &StaticSecret) -> String {
    format!(
        "{text}[[admin_key]]\nname = \"operator\"\npublic_key = \"{}\"\n\n",
        hex(secret.public_key().as_bytes())
    )
}

#[test]
fn r1_h1_a_changed_forged_or_older_bundle_is_refused_at_reload_and_the_node_serves_on() {
    // Epoch 1 lists replica 1 only.
    let f = Fixture::listing(&[(1, "dc-a"), (2, "dc-b")], &[1]);
    let admin_key = StaticSecret::generate().unwrap();
    let base = with_admin(&f.config_text(1, &[1], None, None), &admin_key);
    let path = f.write_config(1, "node.toml", &base);
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    assert_eq!(node.accepted_epoch(), 1);
    let data = f.root().join("node-1").join("data");
    let epoch_file = || std::fs::read_to_string(data.join(EPOCH_FILE)).unwrap();
    assert_eq!(epoch_file(), "vaultfleet accepted epoch 1\n");

    // One byte of the artifact changed.
    let evidence =
        Evidence::decode(&std::fs::read(f.root().join("evidence.bin")).unwrap()).unwrap();
    let mut bundle = Bundle::decode(&evidence.bundle).unwrap();
    let mut artifact = FleetArtifact::decode(&bundle.artifact).unwrap();
    artifact.replicas[0].opaque_key[5] ^= 0x40;
    bundle.artifact = artifact.encode().unwrap();
    let changed = f.root().join("changed.bin");
    std::fs::write(&changed, evidence_of(bundle.encode().unwrap(), &artifact)).unwrap();
    let path = f.write_config(
        1,
        "changed.toml",
        &f.with_evidence(&base, &changed, &f.witness_log()),
    );
    let e = node.reload(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            ReloadError::Start(StartError::Artifact {
                source: ArtifactMismatch::Unverified(BundleError::DigestMismatch),
                ..
            })
        ),
        "{e:?}"
    );

    // A forged epoch 2 adding replica 2 (another witness key, same name).
    let (forged, forged_log) = f.forge(&f.artifact(2, &[1, 2], &[]), "forger");
    let text = with_admin(&f.config_text(1, &[1, 2], None, None), &admin_key);
    let path = f.write_config(
        1,
        "forged.toml",
        &f.with_evidence(&text, &forged, &forged_log),
    );
    let e = node.reload(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            ReloadError::Start(StartError::Artifact {
                source: ArtifactMismatch::Unverified(BundleError::WitnessSignature),
                ..
            })
        ),
        "{e:?}"
    );
    assert_eq!(node.accepted_epoch(), 1, "the node keeps epoch 1");
    assert_eq!(epoch_file(), "vaultfleet accepted epoch 1\n");
    // The membership gate still follows epoch 1.
    let admin = admin_of(&f, &node, admin_key.clone());
    let refused = admin.add_learner(2, "dc-b").unwrap_err();
    assert!(
        matches!(
            refused,
            AdminError::Refused(RequestError::ConfChangeRejected(
                ConfChangeRejection::NotInAcceptedFleet { epoch: 1, .. }
            ))
        ),
        "{refused:?}"
    );

    // A real epoch 2, then epoch 1 again: refused, epoch 2 kept.
    let epoch_2 = f.sign(&f.artifact(2, &[1], &[]), "epoch-2.bin");
    let path = f.write_config(
        1,
        "epoch-2.toml",
        &f.with_evidence(&base, &epoch_2, &f.witness_log()),
    );
    assert_eq!(node.reload(NodeConfig::load(&path).unwrap()).unwrap(), 2);
    assert_eq!(epoch_file(), "vaultfleet accepted epoch 2\n");
    let path = f.write_config(1, "epoch-1.toml", &base);
    let e = node.reload(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            ReloadError::Start(StartError::Artifact {
                source: ArtifactMismatch::Rollback {
                    epoch: 1,
                    accepted: 2
                },
                ..
            })
        ),
        "{e:?}"
    );
    assert_eq!(node.accepted_epoch(), 2);
    assert_eq!(epoch_file(), "vaultfleet accepted epoch 2\n");

    // It serves on.
    let c = client(&f, 1, node.vault_addr());
    assert!(matches!(c.register(b"after", b"code", b"secret"), Ok(1)));
    node.stop().unwrap();
}

#[test]
fn r1_m1_an_unlisted_peer_key_gets_no_client_session_after_a_reload() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let admin_key = StaticSecret::generate().unwrap();
    let base = with_admin(&f.config_text(1, &[1], None, None), &admin_key);
    let path = f.write_config(1, "node.toml", &base);
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    // The control: a pinned admin key has a session.
    assert!(has_session(&f, &node, &admin_key));

    // An attacker's key as [[peer]] 99, which the artifact does not list.
    let attacker = StaticSecret::generate().unwrap();
    let text = format!(
        "{base}[[peer]]\nid = 99\naddress = \"127.0.0.1:9\"\ndatacenter = \"dc-x\"\ntransport_key = \"{}\"\n\n",
        hex(attacker.public_key().as_bytes())
    );
    let path = f.write_config(1, "attacker.toml", &text);
    assert_eq!(node.reload(NodeConfig::load(&path).unwrap()).unwrap(), 1);
    assert!(
        !has_session(&f, &node, &attacker),
        "an unlisted [[peer]]'s key opened a client session"
    );
    assert!(has_session(&f, &node, &admin_key));
    node.stop().unwrap();
}

#[test]
fn r1_m1_a_peer_learner_flag_disagreeing_with_the_artifact_is_refused() {
    let f = Fixture::new(&[(1, "dc-a"), (2, "dc-b")]);
    // Epoch 1 lists replica 2 as a voter.
    let text = f.config_text(1, &[1, 2], None, None).replacen(
        "[[peer]]\nid = 2\n",
        "[[peer]]\nid = 2\nlearner = true\n",
        1,
    );
    assert!(text.contains("learner = true"));
    let path = f.write_config(1, "learner.toml", &text);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            e,
            StartError::Artifact {
                source: ArtifactMismatch::Peer {
                    id: 2,
                    what: "a learner flag",
                    ..
                },
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn r1_l1_a_reload_with_an_oversized_bundle_changes_nothing() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let base = f.config_text(1, &[1], None, None);
    let path = f.write_config(1, "node.toml", &base);
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));

    // A valid epoch 2 (witnessed, countersigned) too large for a handshake:
    // 250 more replicas with the longest datacenter labels.
    let mut big = f.artifact(2, &[1], &[]);
    for id in 1000..1250u64 {
        big.replicas.push(ReplicaKeys {
            id,
            datacenter: "d".repeat(255),
            response_key: [7; 32],
            transport_key: [8; 32],
            opaque_key: [9; 32],
        });
    }
    let evidence = f.sign(&big, "big.bin");
    let admin_key = StaticSecret::generate().unwrap();
    let text = with_admin(
        &f.with_evidence(&base, &evidence, &f.witness_log()),
        &admin_key,
    );
    let path = f.write_config(1, "big.toml", &text);
    let e = node.reload(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(e, ReloadError::Start(StartError::BundleTooLarge { .. })),
        "{e:?}"
    );
    // The new pins did not take effect, nor did the bundle.
    assert!(
        !has_session(&f, &node, &admin_key),
        "the refused reload's admin key was pinned"
    );
    assert_eq!(node.accepted_epoch(), 1);
    let data = f.root().join("node-1").join("data");
    assert_eq!(
        std::fs::read_to_string(data.join(EPOCH_FILE)).unwrap(),
        "vaultfleet accepted epoch 1\n"
    );
    let c = client(&f, 1, node.vault_addr());
    assert!(matches!(c.register(b"after", b"code", b"secret"), Ok(1)));
    node.stop().unwrap();
}
