//! A node refuses to start, touching nothing in its data directory, with a
//! wrong PKCS#11 PIN, a corrupt config, or a data directory that belongs to
//! another replica. The control: the same fixture (tests/common) starts,
//! serves a vault client over the network, and stops.
// Tests of sockets and processes run in wall-clock time, every wait bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::common;

use std::sync::Arc;

use common::{chain, evidence_of, snapshot, Fixture, FLEET, GROUP, READY_WAIT};
use vaultfleet::hsm::{DeviceFault, HsmError};
use vaultfleet_audit::fleet::evidence::Evidence;
use vaultfleet_audit::fleet::FleetArtifact;
use vaultfleet_audit::{Bundle, BundleError};
use vaultfleet_net::open::OpenClientConfig;
use vaultfleet_node::config::{NodeConfig, Runtime};
use vaultfleet_node::hsm::{open_hsm, HsmOpenError};
use vaultfleet_node::run::{
    ArtifactMismatch, DataDirError, RunningNode, StartError, EPOCH_FILE, LOG_DIR,
};
use vaultfleet_vault::{
    BundleTrust, KsfParams, RemoteVaultEndpoint, ServerTrust, VaultClient, VaultClientConfig,
    VaultEndpoint,
};

#[test]
fn a_one_voter_fleet_starts_serves_a_vault_client_and_restarts_on_its_data() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let path = f.write_config(1, "node.toml", &f.config_text(1, &[1], None, None));
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT), "the node serves");
    assert_eq!(node.status().leader, Some(1));
    let now = f.now;
    let trust = BundleTrust::new(f.verifier.clone(), Arc::new(move || now));
    let client = |address| {
        VaultClient::with_verifier(
            vec![Arc::new(
                RemoteVaultEndpoint::new(
                    1,
                    address,
                    FLEET,
                    ServerTrust::Bundles(Arc::clone(&trust)),
                    OpenClientConfig::default(),
                )
                .unwrap(),
            ) as Arc<dyn VaultEndpoint>],
            GROUP,
            f.verifier.clone(),
            Arc::new(move || now),
            VaultClientConfig {
                ksf: KsfParams::TESTS_ONLY,
                ..VaultClientConfig::default()
            },
        )
        .unwrap()
    };
    let c = client(node.vault_addr());
    assert_eq!(c.register(b"user-1", b"code", b"secret").unwrap(), 1);
    assert_eq!(c.recover(b"user-1", b"code").unwrap().as_slice(), b"secret");
    let probe = node.probe();
    assert_eq!(probe.hsm_health(), Ok(()));
    assert_eq!(probe.disk_health(), Ok(()));
    node.stop().unwrap();

    // A restart opens the same sealed store: the registration is there.
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    let c = client(node.vault_addr());
    assert_eq!(c.recover(b"user-1", b"code").unwrap().as_slice(), b"secret");
    node.stop().unwrap();
}

/// P5 on the daemon: whether it stops (SIGTERM) or is dropped, a node on
/// the pool has closed its sealed sled store when that returns, so a start
/// right after opens the same data directory (sled's lock is free) and finds
/// what was acknowledged; and the other runtime opens it too.
#[test]
fn p5_a_node_on_the_pool_closes_its_store_when_stopped_or_dropped() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let path = f.write_config(1, "node.toml", &f.config_text(1, &[1], None, None));
    let now = f.now;
    let trust = BundleTrust::new(f.verifier.clone(), Arc::new(move || now));
    let client = |address| {
        VaultClient::with_verifier(
            vec![Arc::new(
                RemoteVaultEndpoint::new(
                    1,
                    address,
                    FLEET,
                    ServerTrust::Bundles(Arc::clone(&trust)),
                    OpenClientConfig::default(),
                )
                .unwrap(),
            ) as Arc<dyn VaultEndpoint>],
            GROUP,
            f.verifier.clone(),
            Arc::new(move || now),
            VaultClientConfig {
                ksf: KsfParams::TESTS_ONLY,
                ..VaultClientConfig::default()
            },
        )
        .unwrap()
    };
    let start = |runtime: Runtime| {
        let mut config = NodeConfig::load(&path).unwrap();
        config.runtime = runtime;
        let node = RunningNode::start(config).unwrap_or_else(|e| {
            panic!("start on {runtime}: {}", chain(&e));
        });
        assert!(node.wait_ready(READY_WAIT), "serves on {runtime}");
        node
    };
    // The sealed sled store opens at once: sled's lock is free.
    let config = NodeConfig::load(&path).unwrap();
    let closed = || {
        let log = vaultfleet::Sealed::open_sled(
            config.data_dir.join(LOG_DIR),
            open_hsm(&config.hsm).unwrap(),
            vaultfleet::SealedConfig::new(config.group, config.replica_id),
        );
        if let Err(e) = log {
            panic!("the store is still open: {}", chain(&e));
        }
    };
    let node = start(Runtime::Pool);
    assert_eq!(
        client(node.vault_addr())
            .register(b"user-1", b"code", b"one")
            .unwrap(),
        1
    );
    // Dropped without `stop`: the store is closed when the drop returns.
    drop(node);
    closed();
    let node = start(Runtime::Pool);
    let c = client(node.vault_addr());
    assert_eq!(c.recover(b"user-1", b"code").unwrap().as_slice(), b"one");
    assert_eq!(c.register(b"user-2", b"code", b"two").unwrap(), 1);
    node.stop().unwrap();
    closed();
    // Stopped: likewise, and the threads runtime reads the same store.
    let node = start(Runtime::Threads);
    let c = client(node.vault_addr());
    assert_eq!(c.recover(b"user-2", b"code").unwrap().as_slice(), b"two");
    node.stop().unwrap();
    closed();
    let node = start(Runtime::Pool);
    let c = client(node.vault_addr());
    assert_eq!(c.recover(b"user-1", b"code").unwrap().as_slice(), b"one");
    node.stop().unwrap();
}

#[test]
fn a_data_directory_of_another_replica_is_refused_untouched() {
    let f = Fixture::new(&[(1, "dc-a"), (2, "dc-b")]);
    let data = f.run_once(1);
    let before = snapshot(&data);
    assert!(!before.is_empty());
    let text = f.config_text(2, &[1, 2], None, Some(&data));
    let path = f.write_config(2, "node.toml", &text);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(e, StartError::DataDir(DataDirError::Foreign { .. })),
        "{e:?}"
    );
    let text = chain(&e);
    assert!(text.contains("replica 1 of group 1"), "{text}");
    assert!(text.contains("not to replica 2"), "{text}");
    assert_eq!(snapshot(&data), before, "the data directory is untouched");

    // A non-empty folder that is no node's data directory is refused too.
    let stranger = f.root().join("stranger");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("notes.txt"), b"mine").unwrap();
    let before = snapshot(&stranger);
    let path = f.write_config(
        2,
        "stranger.toml",
        &f.config_text(2, &[1, 2], None, Some(&stranger)),
    );
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(e, StartError::DataDir(DataDirError::NotADataDir { .. })),
        "{e:?}"
    );
    assert_eq!(snapshot(&stranger), before);
}

#[test]
fn a_corrupt_config_is_refused_and_the_data_directory_untouched() {
    let f = Fixture::new(&[(1, "dc-a"), (2, "dc-b")]);
    let data = f.run_once(1);
    let before = snapshot(&data);
    let good = f.config_text(1, &[1, 2], None, None);
    // Cut short in the middle of a table.
    let cut = &good[..good.find("[vault]").unwrap() + 12];
    let path = f.write_config(1, "cut.toml", cut);
    assert!(NodeConfig::load(&path).is_err());
    // A stray byte sequence.
    let path = f.write_config(1, "garbage.toml", "fleet_id = \"x\"\n\u{0}\u{1}[[[");
    assert!(NodeConfig::load(&path).is_err());
    // Well-formed but inconsistent: this node's [[peer]] table pins another key.
    let own_key = &f.replicas[&1].1;
    let other_key = &f.replicas[&2].1;
    let swapped = good
        .replacen(own_key.as_str(), "SWAP", 1)
        .replacen(other_key.as_str(), own_key, 1)
        .replacen("SWAP", other_key, 1);
    let path = f.write_config(1, "swapped.toml", &swapped);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(e, StartError::TransportKeyMismatch { .. }),
        "{e:?}"
    );
    assert_eq!(snapshot(&data), before, "the data directory is untouched");
    // The good config still starts on it.
    let path = f.write_config(1, "good.toml", &good);
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    node.stop().unwrap();
}

#[test]
fn a_wrong_pkcs11_pin_is_refused_and_the_data_directory_untouched() {
    let Some(module) = vaultfleet::hsm::softhsm2_module() else {
        panic!("SoftHSM2 is required (apt-get install softhsm2)");
    };
    let f = Fixture::new(&[(1, "dc-a")]);
    let data = f.run_once(1);
    let before = snapshot(&data);
    let token_dir = f.root().join("softhsm");
    std::fs::create_dir_all(&token_dir).unwrap();
    let token = vaultfleet::hsm::softhsm2_throwaway_token(&token_dir, "node-1", "right-pin-1234")
        .expect("a SoftHSM2 token");
    drop(token);
    let pin_file = f.root().join("node-1").join("hsm.pin");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut p = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pin_file)
            .unwrap();
        p.write_all(b"wrong-pin-9999\n").unwrap();
    }
    let hsm = format!(
        "kind = \"pkcs11\"\nmodule = \"{}\"\ntoken_label = \"node-1\"\npin_file = \"{}\"\n",
        module.display(),
        pin_file.display()
    );
    let path = f.write_config(1, "pkcs11.toml", &f.config_text(1, &[1], Some(&hsm), None));
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            &e,
            StartError::Hsm(HsmOpenError::Pkcs11 {
                source: HsmError::Unusable(DeviceFault::WrongPin { .. }),
                ..
            })
        ),
        "{e:?}"
    );
    let text = chain(&e);
    assert!(
        text.contains("user PIN of token \"node-1\" is wrong"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-pin-9999"),
        "the PIN is never shown: {text}"
    );
    assert_eq!(snapshot(&data), before, "the data directory is untouched");
}

/// The fixture's epoch-1 evidence with one byte of its artifact changed (a
/// response key's), the witness's digest, signatures and proofs as they were.
fn changed_evidence(f: &Fixture) -> std::path::PathBuf {
    let evidence =
        Evidence::decode(&std::fs::read(f.root().join("evidence.bin")).unwrap()).unwrap();
    let mut bundle = Bundle::decode(&evidence.bundle).unwrap();
    let mut artifact = FleetArtifact::decode(&bundle.artifact).unwrap();
    artifact.replicas[0].response_key[0] ^= 1;
    bundle.artifact = artifact.encode().unwrap();
    let path = f.root().join("changed.bin");
    std::fs::write(&path, evidence_of(bundle.encode().unwrap(), &artifact)).unwrap();
    path
}

#[test]
fn r1_h1_a_changed_or_forged_bundle_is_refused_at_start_touching_nothing() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let good = f.config_text(1, &[1], None, None);
    // A fresh data directory is not even created.
    let changed = f.with_evidence(&good, &changed_evidence(&f), &f.witness_log());
    let path = f.write_config(1, "changed.toml", &changed);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            &e,
            StartError::Artifact {
                source: ArtifactMismatch::Unverified(BundleError::DigestMismatch),
                ..
            }
        ),
        "{e:?}"
    );
    let data = f.root().join("node-1").join("data");
    assert!(!data.exists(), "nothing written");

    // Signed by another witness key (named as the pinned one), its own log.
    let (forged, forged_log) = f.forge(&f.artifact(2, &[1], &[]), "forger");
    let path = f.write_config(
        1,
        "forged.toml",
        &f.with_evidence(&good, &forged, &forged_log),
    );
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            &e,
            StartError::Artifact {
                source: ArtifactMismatch::Unverified(BundleError::WitnessSignature),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!data.exists(), "nothing written");

    // On a data directory holding a replica's state, nothing changes either.
    let data = f.run_once(1);
    let before = snapshot(&data);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(matches!(&e, StartError::Artifact { .. }), "{e:?}");
    assert_eq!(snapshot(&data), before, "the data directory is untouched");
}

#[test]
fn r1_h1_a_start_with_evidence_older_than_the_accepted_epoch_is_refused() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let epoch_2 = f.sign(&f.artifact(2, &[1], &[]), "epoch-2.bin");
    let good = f.config_text(1, &[1], None, None);
    let path = f.write_config(
        1,
        "epoch-2.toml",
        &f.with_evidence(&good, &epoch_2, &f.witness_log()),
    );
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    assert_eq!(node.accepted_epoch(), 2);
    node.stop().unwrap();
    let data = f.root().join("node-1").join("data");
    assert_eq!(
        std::fs::read_to_string(data.join(EPOCH_FILE)).unwrap(),
        "vaultfleet accepted epoch 2\n"
    );
    let before = snapshot(&data);
    // Epoch 1's evidence verifies (the same witness and operator) but is older.
    let path = f.write_config(1, "epoch-1.toml", &good);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            &e,
            StartError::Artifact {
                source: ArtifactMismatch::Rollback {
                    epoch: 1,
                    accepted: 2
                },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(snapshot(&data), before, "the data directory is untouched");
}

#[test]
fn r1_l6_a_missing_soft_hsm_file_is_refused_and_not_created() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let typo = f.root().join("node-1").join("hsm.sfot");
    let hsm = format!("kind = \"soft\"\nfile = \"{}\"\n", typo.display());
    let path = f.write_config(1, "typo.toml", &f.config_text(1, &[1], Some(&hsm), None));
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(&e, StartError::Hsm(HsmOpenError::SoftMissing { .. })),
        "{e:?}"
    );
    assert!(!typo.exists(), "no soft HSM file was created");
    assert!(!f.root().join("node-1").join("data").exists());
}

#[test]
fn r1_m1_a_config_writable_by_group_or_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = Fixture::new(&[(1, "dc-a")]);
    let path = f.write_config(1, "node.toml", &f.config_text(1, &[1], None, None));
    for mode in [0o620, 0o602, 0o666] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = NodeConfig::load(&path).unwrap_err();
        assert!(
            matches!(e, vaultfleet_node::config::ConfigError::Writable { .. }),
            "mode {mode:o}: {e:?}"
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(NodeConfig::load(&path).is_ok());
}

#[test]
fn r1_l4_a_config_that_is_not_a_small_regular_file_is_refused() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let dir = f.root().join("node-1").join("a-folder.toml");
    std::fs::create_dir_all(&dir).unwrap();
    let e = NodeConfig::load(&dir).unwrap_err();
    assert!(
        matches!(e, vaultfleet_node::config::ConfigError::NotAFile { .. }),
        "{e:?}"
    );
    // Over the cap: a valid config padded with a comment.
    let mut text = f.config_text(1, &[1], None, None);
    text.push('#');
    text.push_str(&"x".repeat(vaultfleet_node::config::CONFIG_BYTES_MAX as usize));
    text.push('\n');
    let path = f.write_config(1, "huge.toml", &text);
    let e = NodeConfig::load(&path).unwrap_err();
    assert!(
        matches!(e, vaultfleet_node::config::ConfigError::NotAFile { .. }),
        "{e:?}"
    );
}

/// R3-L2 (re-review of the daemon): a data directory that group or others can
/// write is refused (they could plant an epoch floor or symlinks), touching
/// nothing; a node's own data directory is created 0700.
#[test]
fn r3_l2_a_data_directory_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = Fixture::new(&[(1, "dc-a"), (2, "dc-b")]);
    let data = f.run_once(1);
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the node made its data directory private");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = snapshot(&data);
    let text = f.config_text(1, &[1, 2], None, Some(&data));
    let path = f.write_config(1, "open.toml", &text);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(e, StartError::DataDir(DataDirError::Writable { .. })),
        "{e:?}"
    );
    assert_eq!(snapshot(&data), before, "the data directory is untouched");
}
